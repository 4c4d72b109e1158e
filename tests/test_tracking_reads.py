"""What idempotent metric logging reads from the server: one get_run per epoch logged in
order, a metric's history only where a step below its latest is asked for."""

from __future__ import annotations

import pytest

from spark_core import tracking


def _epoch(e: int) -> dict[str, float]:
    return {"policy/reward_mean": 0.1 * e, "eval/accuracy": 0.5 + 0.01 * e, "time/update_s": 3.0 + e}


@pytest.fixture
def reads(mlflow_db, monkeypatch):
    from mlflow import MlflowClient

    seen = {"get_run": 0, "history": []}
    get_run, history = MlflowClient.get_run, MlflowClient.get_metric_history

    def counted_get_run(self, run_id):
        seen["get_run"] += 1
        return get_run(self, run_id)

    def counted_history(self, run_id, key):
        seen["history"].append(key)
        return history(self, run_id, key)

    monkeypatch.setattr(MlflowClient, "get_run", counted_get_run)
    monkeypatch.setattr(MlflowClient, "get_metric_history", counted_history)
    return seen


def _steps(run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_epochs_in_order_read_no_history(reads):
    rid = tracking.start_run({}, run_name="r", tags={})
    for e in range(4):
        assert tracking.log_metrics(rid, _epoch(e), step=e) == 3
    assert tracking.log_metrics(rid, _epoch(3), step=3) == 0  # a retried epoch logs nothing
    assert reads["get_run"] == 5 and reads["history"] == []
    # a segment's epochs after the logged ones: still no history
    assert tracking.backfill(rid, [_epoch(4), _epoch(5)], first_step=4) == 6
    assert reads["history"] == []
    assert _steps(rid, "eval/accuracy") == [(e, pytest.approx(_epoch(e)["eval/accuracy"])) for e in range(6)]


def test_a_gap_is_found_from_history_and_filled_once(reads):
    rid = tracking.start_run({}, run_name="r", tags={})
    tracking.log_metrics(rid, _epoch(0), step=0)
    tracking.log_metrics(rid, {**_epoch(2), "eval/only_here": 1.0}, step=2)  # epoch 1 was lost
    assert reads["history"] == []
    assert tracking.backfill(rid, [_epoch(0), _epoch(1), {**_epoch(2), "eval/only_here": 1.0}]) == 3
    # only the keys with a step below their latest step asked for
    assert sorted(reads["history"]) == sorted(_epoch(0))
    for key in _epoch(0):
        assert [s for s, _ in _steps(rid, key)] == [0, 1, 2], key
    assert tracking.backfill(rid, [_epoch(0), _epoch(1), _epoch(2)]) == 0
    assert [s for s, _ in _steps(rid, "eval/only_here")] == [2]
