"""spark_core.epoch is the one SPARK epoch: its three drivers (Flyte nodes, the colocated
segment, the in-process runner) run the same stages on the tiny model, and a new
train.lr reuses the first epoch's rollouts and rewards from Flyte's cache."""

from __future__ import annotations

import json
import math
import os
import re

import pyarrow as pa
import pytest

from spark_core import schemas
from spark_core.config import load_config
from tests.helpers import safetensors_weights, torch_extensions_dir

pytestmark = pytest.mark.slow  # a 2-epoch Flyte run, its rerun at another lr, a segment and an in-process run

# n_shards 1: the segment rolls out as one shard, so its samples are the DAG's only then
# a short warm start sampled at 0.7, so that some groups' rewards vary and the updates move the
# weights (at 1.0 all 32 samples of its two epochs score 0 and every gradient is zero)
SMALL = {"bootstrap.steps": 40, "bootstrap.batch_size": 8, "data.synthetic_train": 16, "data.synthetic_eval": 4,
         "rollout.temperature": 0.7, "rollout.prompts_per_epoch": 4, "rollout.n_samples": 4,
         "rollout.max_new_tokens": 8, "rollout.n_shards": 1,
         "recycle.recycled_batch": 2, "train.train_batch_size": 16, "train.micro_batch_size": 8,
         "eval.max_new_tokens": 8, "eval.judge_samples": 2, "eval.answer_likelihood_problems": 2, "epochs": 2}


@pytest.fixture(scope="module")
def flyte_cache(tmp_path_factory):
    """Flyte's local cache in a fresh directory; records which cached tasks executed."""
    from diskcache import Cache
    from flytekit.core.local_cache import LocalTaskCache

    mp = pytest.MonkeyPatch()
    mp.setenv("FLYTE_LOCAL_CACHE_ENABLED", "true")
    mp.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir())
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    mp.setattr(LocalTaskCache, "_cache", Cache(str(tmp_path_factory.mktemp("flyte-cache"))), raising=False)
    mp.setattr(LocalTaskCache, "_initialized", True)
    executed: list[tuple[str, str]] = []
    real_set = LocalTaskCache.set

    def recording_set(task_name, version, inputs, ignored, outputs):  # called after a cache miss ran the task
        tag = inputs.literals.get("tag")
        name = re.sub(r"^map_(.+)_[0-9a-f]{32}-arraynode$", r"\1", task_name.rsplit(".", 1)[-1])  # a map_task
        executed.append((name, tag.scalar.primitive.string_value if tag else ""))
        return real_set(task_name, version, inputs, ignored, outputs)

    mp.setattr(LocalTaskCache, "set", staticmethod(recording_set))
    yield executed
    mp.undo()


@pytest.fixture(scope="module")
def flyte_run(flyte_cache):
    from workflows.spark import spark

    out = spark(overrides=json.dumps(SMALL))
    ran = list(flyte_cache)
    return out, schemas.history_rows(out.metrics.open(pa.Table).all()), ran


def _close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def _same_values(h1: list[dict], h2: list[dict]) -> None:
    """Equal keys per epoch, and equal values but for timings."""
    assert [sorted(m) for m in h1] == [sorted(m) for m in h2]
    for e, (m1, m2) in enumerate(zip(h1, h2)):
        for k in m1:
            if not k.startswith("time/") and not k.endswith(("seconds", "_s")):
                assert _close(float(m1[k]), float(m2[k])), (e, k, m1[k], m2[k])


def _ids_by_epoch(rows: list[dict], tag: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in rows:
        if r["rollout_id"].split("#", 1)[1].startswith(f"e{r['epoch']}-{tag}.") and r["sample_index"] == 0:
            out.setdefault(r["epoch"], []).append(r["prompt_id"])
    return out


def _max_diff(a: str, b: str) -> float:
    wa, wb = safetensors_weights(a), safetensors_weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def test_three_drivers_run_the_same_epochs(flyte_run, tmp_path, monkeypatch):
    from spark_core.rollout.colocated import make_colocated
    from spark_core.run import prepare, run
    from spark_core.segment import run_segment
    from spark_core.train.engine import GRPOTrainer

    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")
    cfg = load_config("tiny-cpu", json.dumps(SMALL))
    out, flyte_history, _ = flyte_run

    local_history, ops = run(cfg, str(tmp_path / "local"))
    _same_values(flyte_history, local_history)  # same prompts, samples, rewards, steps and evaluations
    assert all(m["policy/grad_norm"] > 0 for m in local_history[1:])  # the updates had something to learn

    p = prepare(cfg, str(tmp_path / "seg"), start=ops.start)  # the same warm start
    seg, trainer = run_segment(
        cfg, make_trainer=lambda s: GRPOTrainer(cfg, p["start"], p["start"], state_in=s),
        make_engine=lambda tr: make_colocated(cfg, tr, p["start"]), train=p["train"], eval_prompts=p["eval"],
        judge_prompts=p["judge"], queue=[], first_epoch=0, n_epochs=cfg.epochs, state_in=None, key="drivers")
    _same_values(local_history[1:], seg.epoch_metrics)

    # what the runner chose, as the segment's own artifacts record it
    trace = {(stage, e): v for stage, e, v in ops.trace if stage != "update"}
    assert _ids_by_epoch(seg.artifacts["rollouts"], "policy") == {e: trace["select", e] for e in range(2)}
    queued = _ids_by_epoch(seg.artifacts["rollouts"], "recycled")
    assert queued == {e: trace["queue", e] for e in range(2) if trace["queue", e]} and queued
    seg_steps = [(s["epoch"], s["phase"], s["step"]) for s in seg.artifacts["steps"]]
    local_steps = [(e, phase, st) for stage, e, v in ops.trace if stage == "update" for phase, steps in [v]
                   for st in steps]
    assert sorted(seg_steps) == sorted(local_steps) and len(local_steps) >= 3
    for e, m in enumerate(flyte_history[1:]):  # the DAG's updates took the same steps
        mine = [st for ee, ph, st in local_steps if ee == e and ph == "policy"]  # 0-based step indices
        assert m["policy/steps"] == len(mine) and m["policy/global_step"] == max(mine) + 1

    # and end at the same weights
    trainer.save_hf(str(tmp_path / "seg-final"))
    final = str(tmp_path / "local" / f"e{cfg.epochs - 1}-recycled")
    assert os.path.isdir(final)
    assert _max_diff(out.policy.path, final) < 1e-5
    assert _max_diff(str(tmp_path / "seg-final"), final) < 1e-5


def test_the_dag_run_end_to_end(flyte_run):
    from tests.test_workflow_e2e import check_finished_run

    check_finished_run(flyte_run[0], os.environ["MLFLOW_TRACKING_URI"])


def test_a_new_learning_rate_reuses_the_prefix_and_the_first_rollouts(flyte_run, flyte_cache):
    from workflows.spark import spark

    _, first_history, ran_first = flyte_run
    n = len(flyte_cache)
    out = spark(overrides=json.dumps(dict(SMALL, **{"train.lr": 3e-4})))
    reran = flyte_cache[n:]
    tasks = {t for t, _ in reran}
    for t in ("prepare_data", "base_model", "bootstrap", "judge_eval_set", "select_prompts"):
        assert t not in tasks and t in {t for t, _ in ran_first} | {"bootstrap"}, t
    # epoch 0: its problems' rollouts and rewards and its recycling came from the cache; every
    # stage after the first update ran again at the new learning rate
    assert ("rollout_shard", "e0-policy") not in reran and ("rollout_shard", "e0-policy") in ran_first
    assert ("rollout_shard", "e0-recycled") in reran and ("rollout_shard", "e1-policy") in reran
    assert [t for t, tag in reran if t == "score_rollouts"] == ["score_rollouts"] * 3  # all but epoch 0's problems
    assert reran.count(("recycle_rollouts", "")) == 1  # epoch 1's only
    assert {"update_policy", "evaluate_policy"} <= tasks
    second = schemas.history_rows(out.metrics.open(pa.Table).all())
    assert second[0] == first_history[0]  # the starting model's evaluation: a cache hit
    assert second[1]["policy/reward_mean"] == first_history[1]["policy/reward_mean"]  # the same first rollouts
    assert second[1]["policy/lr"] != first_history[1]["policy/lr"]
