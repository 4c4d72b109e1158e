"""MLflow over HTTP, as every pod logs: a real `mlflow server` on 127.0.0.1 is stopped
during a run and started again on the same store; every epoch's metrics arrive exactly
once (log_epoch defers what it cannot log, finish_tracking backfills it), and an
unreachable server fails a tracking task in seconds, as an error Flyte retries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from spark_core.config import SparkConfig

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group, on a fixed port and SQLite store."""

    def __init__(self, root, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 60.0) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(
            [exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = Server(tmp_path, _free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT", "FLYTE_ATTEMPT_NUMBER"):
        monkeypatch.delenv(key, raising=False)
    srv.start()
    yield srv
    srv.stop()


def _epoch(e: int) -> dict[str, float]:
    return {"policy/reward_mean": 0.1 * e, "eval/accuracy": 0.5 + 0.01 * e, "time/update_s": 3.0 + e}


def test_an_outage_mid_run_loses_and_duplicates_nothing(server, monkeypatch):
    from flytekit.exceptions.user import FlyteRecoverableException
    from mlflow import MlflowClient

    from spark_core import tracking
    from tasks.tracking import finish_tracking, log_epoch

    run_id = tracking.start_run(SparkConfig().to_dict(), run_name="outage", tags={})
    logged = [log_epoch.task_function(run_id=run_id, epoch=0, metrics=[json.dumps(_epoch(0))])]

    server.stop()
    # a try with retries left: fails within seconds (not MLflow's default ~4 minutes of
    # client retries) as an error Flyte retries
    monkeypatch.setenv("FLYTE_ATTEMPT_NUMBER", "0")
    t = time.time()
    with pytest.raises(FlyteRecoverableException, match="unreachable"):
        log_epoch.task_function(run_id=run_id, epoch=1, metrics=[json.dumps(_epoch(1))])
    assert time.time() - t < 30
    # the last try gives up on the server and returns the epoch's metrics: the run goes on
    monkeypatch.setenv("FLYTE_ATTEMPT_NUMBER", "3")
    logged.append(log_epoch.task_function(run_id=run_id, epoch=1, metrics=[json.dumps(_epoch(1))]))
    monkeypatch.delenv("FLYTE_ATTEMPT_NUMBER")

    server.start()
    logged.append(log_epoch.task_function(run_id=run_id, epoch=2, metrics=[json.dumps(_epoch(2))]))
    # a retried log_epoch whose first try had logged: nothing is logged twice
    log_epoch.task_function(run_id=run_id, epoch=2, metrics=[json.dumps(_epoch(2))])
    client = MlflowClient(tracking_uri=server.uri)
    assert [m.step for m in client.get_metric_history(run_id, "eval/accuracy")] == [0, 2]

    from spark_core import schemas

    table = finish_tracking.task_function(run_id=run_id, epoch_metrics=logged).dataframe  # EPOCH_METRICS
    history = schemas.history_rows(table)
    assert history == [_epoch(e) for e in range(3)]
    for key in _epoch(0):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert got == [(e, pytest.approx(_epoch(e)[key])) for e in range(3)], key
    assert client.get_run(run_id).info.status == "FINISHED"
    # finishing again (a retried finish_tracking) adds nothing
    finish_tracking.task_function(run_id=run_id, epoch_metrics=logged)
    assert len(client.get_metric_history(run_id, "eval/accuracy")) == 3


def test_a_cluster_run_without_a_shared_server_stops_at_start_tracking(monkeypatch, tmp_path):
    from spark_core import tracking
    from tasks.tracking import start_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SPARK_MLFLOW_DB", str(tmp_path / "local.db"))
    assert tracking.check_tracking_uri().startswith("sqlite:///")  # a laptop run keeps its local file
    monkeypatch.setenv("FLYTE_INTERNAL_EXECUTION_ID", "f3a9c2e1")  # what propeller sets in a pod
    with pytest.raises(RuntimeError, match=r"MLFLOW_TRACKING_URI is not set.*--env MLFLOW_TRACKING_URI="):
        start_tracking.task_function(config=SparkConfig())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'pod.db'}")
    with pytest.raises(RuntimeError, match="a file of this pod"):
        tracking.check_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    assert tracking.check_tracking_uri() == "https://mlflow.example.com"
    assert not (tmp_path / "local.db").exists() and not (tmp_path / "pod.db").exists()
