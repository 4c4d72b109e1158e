"""MLflow bookkeeping: one run per workflow execution, metrics per epoch.

The tracking URI comes from MLFLOW_TRACKING_URI (credentials, if any, from the
environment or Flyte secrets, never from config); the default is a local SQLite file.
"""

from __future__ import annotations

import json
import math
import os

EXPERIMENT = "spark"
DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath(os.environ.get("SPARK_MLFLOW_DB", DEFAULT_DB))


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_run(config: dict, run_name: str, tags: dict[str, str], experiment: str = EXPERIMENT) -> str:
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        params = flatten(config)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow caps params per batch
            mlflow.log_params(dict(items[i : i + 100]))
        return run.info.run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int) -> None:
    mlflow = _mlflow()
    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(float(v))}
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(clean, step=step)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    mlflow = _mlflow()
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def run_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run as (step, value) lists, for plots and reports."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
