"""MLflow tasks (never cached: each execution gets its own run)."""

from __future__ import annotations

import json

from flytekit import current_context, task

from images import light_image
from tasks.common import cfg_of, code_version
from tasks.resources import LIGHT


@task(container_image=light_image, resources=LIGHT)
def start_tracking(config_json: str) -> str:
    from spark_core import tracking

    cfg = cfg_of(config_json)
    exec_id = current_context().execution_id.name
    tags = {"flyte.execution_id": exec_id, "git_sha": code_version(), "preset": cfg.preset,
            "arm": cfg.recycle.arm, "config_hash": cfg.section_hash()}
    return tracking.start_run(cfg.to_dict(), run_name=tracking.run_name(cfg.recycle.arm, cfg.preset, cfg.seed),
                              tags=tags)


@task(container_image=light_image, resources=LIGHT)
def log_epoch(run_id: str, epoch: int, metrics: list[str]) -> str:
    """Merge the stage metrics of one epoch, log them at step=epoch, return the merge."""
    from spark_core import tracking

    merged: dict[str, float] = {}
    for m in metrics:
        merged.update(json.loads(m))
    tracking.log_metrics(run_id, merged, step=epoch)
    return json.dumps(merged)


@task(container_image=light_image, resources=LIGHT)
def finish_tracking(run_id: str, epoch_metrics: list[str]) -> str:
    """End the run; one whose every epoch came from the cache is tagged as a rerun."""
    from spark_core import tracking

    history = [json.loads(m) for m in epoch_metrics]
    tracking.finish_run(run_id, history)
    return json.dumps(history)


@task(container_image=light_image, resources=LIGHT)
def log_segment(run_id: str, first_epoch: int, metrics: str) -> list[str]:
    """Log a segment's epochs (a JSON list of merged dicts) at steps first_epoch+1, ..."""
    from spark_core import tracking

    out = []
    for i, m in enumerate(json.loads(metrics)):
        tracking.log_metrics(run_id, m, step=first_epoch + i + 1)
        out.append(json.dumps(m))
    return out


@task(container_image=light_image, resources=LIGHT)
def join_logs(parts: list[list[str]]) -> list[str]:
    """The epochs' logs of several blocks or segments, in order, as one list."""
    return [m for part in parts for m in part]
