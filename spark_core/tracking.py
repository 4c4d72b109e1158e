"""MLflow bookkeeping: one run per workflow execution, metrics per epoch.

Runs are named ``{arm}-{preset}-s{seed}`` (e.g. ``spark-tiny-cpu-s42``). A rerun that
reused every stage from Flyte's cache logs exactly the history of the run it repeats,
including every stage's wall time, so `finish_run` recognises it by a hash of that
history: it is tagged ``spark.rerun_of`` = the original run id and renamed
``...-rerun``, and `spark-compare` leaves it out, so it never poses as a new training run.

The tracking URI comes from MLFLOW_TRACKING_URI (credentials, if any, from the
environment or Flyte secrets, never from config); the default is a local SQLite file.
In a Flyte pod (`FLYTE_INTERNAL_EXECUTION_ID` set by propeller) each task would get its
own throw-away file, so there `check_tracking_uri` demands a server URI.

Outages: MLflow's client retries a failed request 7 times with exponential backoff
(about 4 minutes) by default. Here it retries `CLIENT_RETRIES` times (seconds, not
minutes; MLFLOW_HTTP_REQUEST_* in the environment still win), so an unreachable server
fails fast into the tracking tasks' own Flyte retries. Logging is idempotent per
(metric, step): `log_metrics` skips what the run already holds and `backfill` logs the
epochs an outage left out, so no step is ever logged twice. Finding what the run holds
takes one get_run while epochs arrive in order; a metric's history is read only for a
step below its latest one.

Secrets never reach MLflow: a param, tag or metric whose key looks like a secret
(password, token, secret, api key, credential, ...) is refused with a ValueError that
names the key, never the value; so is any value equal to a secret-named environment
variable. Environment variables themselves are never logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time

EXPERIMENT = "spark"
DEFAULT_DB = "mlflow.db"
HISTORY_TAG = "spark.history_sha"
RERUN_TAG = "spark.rerun_of"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath(os.environ.get("SPARK_MLFLOW_DB", DEFAULT_DB))


# MLflow's HTTP client settings unless the environment sets them: 3 retries with a backoff
# of 1, 2, 4 s (plus up to 0.5 s of jitter each) and 20 s per request
CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
REMOTE_ENV = "FLYTE_INTERNAL_EXECUTION_ID"  # propeller sets it in every task pod


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached (after the client's own retries)."""


def in_flyte_pod() -> bool:
    return bool(os.environ.get(REMOTE_ENV))


def check_tracking_uri(remote: bool | None = None) -> str:
    """The tracking URI, refused in a Flyte pod unless it names a server every pod shares."""
    remote = in_flyte_pod() if remote is None else remote
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if remote and (not uri or uri.startswith(("sqlite:", "file:", "/", "."))):
        what = f"MLFLOW_TRACKING_URI is {uri!r}, a file of this pod" if uri else "MLFLOW_TRACKING_URI is not set"
        raise RuntimeError(
            f"{what}: on a Flyte cluster every tracking task runs in its own pod, so each would write its own "
            f"throw-away MLflow store and log_epoch would not find the run. Point the pods at a shared MLflow "
            f"server: `pyflyte run --remote --env MLFLOW_TRACKING_URI=https://mlflow.example.com ...`, or "
            f"propeller's plugins.k8s.default-env-vars for the whole cluster (docs/cluster.md, 'MLflow from pods')")
    return tracking_uri()


def _mlflow():
    for key, value in CLIENT_RETRIES.items():
        os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def is_outage(exc: BaseException) -> bool:
    """Whether an exception from the MLflow client means the server was unreachable or
    failing (connection refused, timeout, 5xx after retries), not a refused request."""
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.RetryError)):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        # rest_utils wraps transport failures as "API request to <url> failed with exception ..."
        text = str(exc)
        return "failed with exception" in text or "Max retries exceeded" in text or "timed out" in text
    return isinstance(exc, (ConnectionError, TimeoutError))


_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "secrets", "token", "credential", "credentials",
                 "apikey", "privatekey", "accesskey"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("auth", "key")}


def _words(key: str) -> list[str]:
    """"hf_token" -> [hf, token]; "openaiApiKey" -> [openai, api, key]; "max_new_tokens" keeps "tokens"."""
    return [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+", key)]


def looks_secret(key: str) -> bool:
    words = _words(key)
    return bool(_SECRET_WORDS & set(words)) or any(p in _SECRET_PAIRS for p in zip(words, words[1:]))


def _secret_env_values() -> set[str]:
    return {v for k, v in os.environ.items() if looks_secret(k) and len(v) >= 8}


def check_loggable(items: dict, what: str = "param") -> None:
    """Raise ValueError (naming the key only) if anything in `items` looks like a secret."""
    env_secrets = _secret_env_values()
    for key, value in items.items():
        if looks_secret(str(key)):
            raise ValueError(f"refusing to log {what} {key!r}: its name looks like a secret "
                             f"(password/token/secret/api key/credential); pass secrets through the environment "
                             f"or Flyte secrets, not the config")
        if isinstance(value, str) and value in env_secrets:
            raise ValueError(f"refusing to log {what} {key!r}: its value is the value of a secret environment variable")


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
    params = flatten(config)
    check_loggable(params, "param")
    check_loggable(tags, "tag")
    mlflow = _mlflow()
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow caps params per batch
            mlflow.log_params(dict(items[i : i + 100]))
        return run.info.run_id


def _clean(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _held_steps(client, run_id: str, wanted: dict[str, set[int]]) -> dict[str, set[int]]:
    """Which of the `wanted` steps of each metric the run already holds.

    One get_run gives every metric's latest step (MLflow keeps, per key, the value with
    the highest step). A wanted step above it is missing and one equal to it is held; a
    key's history is read only when a step below its latest is wanted, which is where an
    outage may have left a gap (a backfill), so logging epochs in order costs one read."""
    latest = {m.key: m.step for m in client.get_run(run_id).data.to_proto().metrics}
    held: dict[str, set[int]] = {}
    for key, steps in wanted.items():
        if key not in latest:
            held[key] = set()
        elif min(steps) < latest[key]:
            held[key] = {m.step for m in client.get_metric_history(run_id, key)} & steps
        else:
            held[key] = {latest[key]} & steps
    return held


def _log_missing(run_id: str, by_step: dict[int, dict[str, float]]) -> int:
    """Log each (metric, step) of `by_step` that the run does not hold yet; how many went in."""
    from mlflow.entities import Metric

    client = _mlflow().MlflowClient()
    wanted: dict[str, set[int]] = {}
    for step, m in by_step.items():
        for k in m:
            wanted.setdefault(k, set()).add(step)
    have = _held_steps(client, run_id, wanted)
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for step, m in sorted(by_step.items()) for k, v in sorted(m.items())
             if step not in have[k]]
    for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=batch[i:i + 1000])
    return len(batch)


def log_metrics(run_id: str, metrics: dict[str, float], step: int) -> int:
    """Log an epoch's metrics at `step`, leaving out any the run already holds at that
    step (a retried task logs nothing twice); the number of metrics logged."""
    check_loggable(metrics, "metric")
    return _log_missing(run_id, {int(step): _clean(metrics)})


def backfill(run_id: str, history: list[dict], first_step: int = 0) -> int:
    """Log every epoch of `history` (epoch i at step first_step + i) that the run lacks:
    what an outage during the run left out. The number of metrics logged."""
    by_step = {first_step + i: _clean(m) for i, m in enumerate(history)}
    for m in by_step.values():
        check_loggable(m, "metric")
    return _log_missing(run_id, by_step)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    mlflow = _mlflow()
    mlflow.MlflowClient().set_terminated(run_id, status=status)


def run_name(arm: str, preset: str, seed: int) -> str:
    return f"{arm}-{preset}-s{seed}"


def history_sha(history: list[dict]) -> str:
    """Hash of a run's per-epoch metrics. Stage timings are part of it, so two runs share
    it only when the second replayed the first's cached outputs."""
    return hashlib.sha256(json.dumps(history, sort_keys=True).encode()).hexdigest()[:32]


def finish_run(run_id: str, history: list[dict], status: str = "FINISHED") -> str | None:
    """Tag the run with its history hash and end it. If an earlier run of the experiment
    logged the very same history, this run was a fully cached replay of it: it is tagged
    as a rerun of that run (returned) and renamed with a "-rerun" suffix."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    sha = history_sha(history)
    run = client.get_run(run_id)
    earlier = [r for r in client.search_runs([run.info.experiment_id], f"tags.`{HISTORY_TAG}` = '{sha}'",
                                             order_by=["attributes.start_time ASC"], max_results=50)
               if r.info.run_id != run_id and r.info.start_time <= run.info.start_time]
    original = None
    if earlier:
        first = earlier[0]
        original = first.data.tags.get(RERUN_TAG) or first.info.run_id
        client.set_tag(run_id, RERUN_TAG, original)
        name = run.info.run_name or ""
        if name and not name.endswith("-rerun"):
            client.set_tag(run_id, "mlflow.runName", f"{name}-rerun")
    client.set_tag(run_id, HISTORY_TAG, sha)
    client.set_terminated(run_id, status=status)
    return original


def run_info(run_id: str) -> dict[str, str]:
    """Where a run lives: {run_id, run_name, experiment, tracking_uri, rerun_of}."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    return {"run_id": run_id, "run_name": run.info.run_name or "", "experiment": exp.name,
            "tracking_uri": tracking_uri(), "rerun_of": run.data.tags.get(RERUN_TAG, "")}
