"""MLflow tasks (never cached: each execution gets its own run).

An unreachable tracking server (after the client's few bounded retries,
spark_core/tracking.py) raises FlyteRecoverableException: flytekit reports any other
exception of a task as non-recoverable, and propeller does not spend `retries` on those.
So a server that is away for a while costs the tracking tasks a few retries, and no
epoch's metrics are lost: `log_epoch` and `log_segment` give up on their last attempt
and return the metrics all the same, and `finish_tracking` logs every epoch the server
still lacks, so a step is logged once whatever failed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, TypeVar

from flytekit import current_context, task
from flytekit.exceptions.user import FlyteRecoverableException

from images import light_image
from flytekit.types.structured import StructuredDataset

from spark_core.config import SparkConfig
from tasks.common import code_version, to_sd
from tasks.resources import LIGHT

log = logging.getLogger(__name__)

TRACKING_RETRIES = 3
ATTEMPT_ENV = "FLYTE_ATTEMPT_NUMBER"  # 0 on the first attempt, set by propeller in every pod
T = TypeVar("T")


def last_attempt() -> bool:
    """Whether this is the task's last try (outside a Flyte pod there is only one)."""
    attempt = os.environ.get(ATTEMPT_ENV)
    return attempt is None or int(attempt) >= TRACKING_RETRIES


def retry_on_outage(what: str, fn: Callable[[], T]) -> T:
    """fn(), with an unreachable server turned into an error that Flyte retries."""
    from spark_core import tracking

    try:
        return fn()
    except Exception as e:
        if tracking.is_outage(e):
            raise FlyteRecoverableException(f"{what}: the MLflow server is unreachable ({e})") from e
        raise


def log_or_defer(what: str, fn: Callable[[], object]) -> bool:
    """fn() that logs metrics; on an outage, retried by Flyte while tries remain, and on the
    last one left to finish_tracking's backfill (the run goes on). Whether it logged."""
    try:
        retry_on_outage(what, fn)
        return True
    except FlyteRecoverableException as e:  # an outage, as retry_on_outage reports it
        if not last_attempt():
            raise
        log.warning("%s; finish_tracking will log these metrics", e)
        return False


@task(container_image=light_image, resources=LIGHT, retries=TRACKING_RETRIES)
def start_tracking(config: SparkConfig) -> str:
    from spark_core import tracking

    # before anything else runs: a cluster run without a shared server would otherwise
    # only fail at log_epoch, after the first GPU stages
    tracking.check_tracking_uri()
    cfg = config
    exec_id = current_context().execution_id.name
    tags = {"flyte.execution_id": exec_id, "git_sha": code_version(), "preset": cfg.preset,
            "arm": cfg.recycle.arm, "config_hash": cfg.section_hash()}
    return retry_on_outage("start_tracking", lambda: tracking.start_run(
        cfg.to_dict(), run_name=tracking.run_name(cfg.recycle.arm, cfg.preset, cfg.seed), tags=tags))


@task(container_image=light_image, resources=LIGHT, retries=TRACKING_RETRIES)
def log_epoch(run_id: str, epoch: int, metrics: list[str]) -> str:
    """Merge the stage metrics of one epoch, log them at step=epoch, return the merge."""
    from spark_core import tracking

    from spark_core.epoch import merge

    merged = merge([json.loads(m) for m in metrics])
    log_or_defer(f"log_epoch {epoch}", lambda: tracking.log_metrics(run_id, merged, step=epoch))
    return json.dumps(merged)


@task(container_image=light_image, resources=LIGHT, retries=TRACKING_RETRIES)
def finish_tracking(run_id: str, epoch_metrics: list[str]) -> StructuredDataset:
    """Log the epochs the server lacks (an outage during the run), then end the run; one
    whose every epoch came from the cache is tagged as a rerun. Returns the history as
    a table (EPOCH_METRICS), one row per epoch."""
    from spark_core import schemas, tracking

    history = [json.loads(m) for m in epoch_metrics]  # epoch i was logged at step i

    def finish():
        n = tracking.backfill(run_id, history)
        if n:
            log.warning("finish_tracking: logged %d metrics that earlier tracking tasks could not", n)
        tracking.finish_run(run_id, history)

    retry_on_outage("finish_tracking", finish)
    t = schemas.history_table(history)
    return to_sd(t, t.schema)


@task(container_image=light_image, resources=LIGHT, retries=TRACKING_RETRIES)
def log_segment(run_id: str, first_epoch: int, metrics: str) -> list[str]:
    """Log a segment's epochs (a JSON list of merged dicts) at steps first_epoch+1, ..."""
    from spark_core import tracking

    history = json.loads(metrics)
    log_or_defer(f"log_segment {first_epoch + 1}-{first_epoch + len(history)}",
                 lambda: tracking.backfill(run_id, history, first_step=first_epoch + 1))
    return [json.dumps(m) for m in history]


@task(container_image=light_image, resources=LIGHT)
def join_logs(parts: list[list[str]]) -> list[str]:
    """The epochs' logs of several blocks or segments, in order, as one list."""
    return [m for part in parts for m in part]
