"""Rollout: G samples per prompt from the current policy, one cached task per shard."""

from __future__ import annotations

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import rollout_image
from tasks.cache_versions import stage_cache
from spark_core.config import ModelConfig, RolloutConfig, StageConfig
from tasks.common import Checkpoint, provenance, rows_of, to_sd
from tasks.resources import ROLLOUT, ROLLOUT_ACCELERATOR


@task(cache=stage_cache("rollout"), container_image=rollout_image, resources=ROLLOUT, accelerator=ROLLOUT_ACCELERATOR,
      shared_memory=True, environment={"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, retries=1)
def rollout_shard(model: ModelConfig, rollout: RolloutConfig, policy: Checkpoint, prompts: StructuredDataset, tag: str,
                  sample_seed: int, n_shards: int, shard: int) -> StructuredDataset:
    """Shard `shard` of `n_shards` (prompts i with i % n_shards == shard), sampled with
    the pass's seed (spark_core.epoch: policy_seed / recycled_seed)."""
    import time

    from spark_core import schemas
    from spark_core.rollout.base import make_backend, rollout_rows, shard_seed

    cfg = StageConfig("rollout", model=model, rollout=rollout)
    rows = rows_of(prompts, schemas.PROMPTS)[shard::n_shards]
    meta = provenance(cfg, "rollout", ("model", "rollout"), tag=tag, seed=str(sample_seed), shard=str(shard))
    if not rows:
        return to_sd([], schemas.ROLLOUTS, meta)
    t0 = time.time()
    backend = make_backend(cfg.rollout.backend, policy.download(), cfg.model, cfg.rollout)
    out = rollout_rows(cfg, backend, rows, tag, shard_seed(sample_seed, shard), desc=f"rollout[{tag}:{shard}]")
    meta["spark.seconds"] = f"{time.time() - t0:.2f}"
    return to_sd(out, schemas.ROLLOUTS, meta)
