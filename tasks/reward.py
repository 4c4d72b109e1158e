"""Verifiable reward: last \\boxed{} answer checked with math_verify, per-sample timeout."""

from __future__ import annotations

import json

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.cache_versions import stage_cache
from spark_core.config import RewardConfig, StageConfig
from tasks.common import provenance, rows_of, to_sd
from tasks.resources import LIGHT


@task(cache=stage_cache("reward"), container_image=light_image, resources=LIGHT)
def score_rollouts(reward: RewardConfig, shards: list[StructuredDataset], tag: str) -> tuple[StructuredDataset, str]:
    from spark_core import schemas
    from spark_core.reward.stage import score

    cfg = StageConfig("reward", reward=reward)
    rows = [r for sd in shards for r in rows_of(sd, schemas.ROLLOUTS)]
    scored, metrics = score(cfg, rows, tag)
    return to_sd(scored, schemas.SCORED_ROLLOUTS, provenance(cfg, "reward", ("reward",), tag=tag)), json.dumps(metrics)
