"""Recycling: this epoch's rollouts become judge and reflection prompts with labels."""

from __future__ import annotations

from typing import NamedTuple, Optional

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.cache_versions import stage_cache
from spark_core.config import RecycleConfig, RolloutConfig, StageConfig
from tasks.common import provenance, rows_of, to_sd
from tasks.resources import LIGHT


@task(cache=stage_cache("recycle"), container_image=light_image, resources=LIGHT)
def recycle_rollouts(recycle: RecycleConfig, rollout: RolloutConfig, prompts: StructuredDataset, scored: StructuredDataset,
                     epoch: int) -> StructuredDataset:
    from spark_core import schemas
    from spark_core.recycle.stage import recycle as build

    cfg = StageConfig("recycle", recycle=recycle, rollout=rollout)
    out = build(cfg, rows_of(prompts, schemas.PROMPTS), rows_of(scored, schemas.SCORED_ROLLOUTS), epoch)
    return to_sd(out, schemas.PROMPTS, provenance(cfg, "recycle", ("recycle",), epoch=str(epoch)))


class QueueOutput(NamedTuple):
    batch: StructuredDataset  # a full recycled batch, or empty when the queue is short
    queue: StructuredDataset  # what waits for a later epoch


@task(cache=stage_cache("recycle"), container_image=light_image, resources=LIGHT)
def queue_recycled(recycle: RecycleConfig, rollout: RolloutConfig, queue: Optional[StructuredDataset], new: StructuredDataset,
                   epoch: int) -> QueueOutput:
    from spark_core import schemas
    from spark_core.recycle.stage import queue as fifo

    cfg = StageConfig("recycle", recycle=recycle, rollout=rollout)
    waiting = rows_of(queue, schemas.PROMPTS) if queue is not None else []
    batch, rest = fifo(cfg, waiting, rows_of(new, schemas.PROMPTS))
    meta = provenance(cfg, "recycle", ("recycle", "rollout"), epoch=str(epoch))
    return QueueOutput(to_sd(batch, schemas.PROMPTS, meta), to_sd(rest, schemas.PROMPTS, meta))
