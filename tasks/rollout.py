"""Rollout: G samples per prompt from the current policy, one cached task per shard."""

from __future__ import annotations

from flytekit import Cache, task
from flytekit.types.structured import StructuredDataset

from images import rollout_image
from tasks.cache_versions import CACHE_VERSIONS
from tasks.common import Checkpoint, cfg_of, provenance, rows_of, to_sd
from tasks.resources import ROLLOUT, ROLLOUT_ACCELERATOR


@task(cache=Cache(version=CACHE_VERSIONS["rollout"]), container_image=rollout_image, resources=ROLLOUT, accelerator=ROLLOUT_ACCELERATOR,
      shared_memory=True, environment={"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, retries=1)
def rollout_shard(config_json: str, policy: Checkpoint, prompts: StructuredDataset, tag: str, seed: int,
                  n_shards: int, shard: int) -> StructuredDataset:
    """Shard `shard` of `n_shards` (prompts i with i % n_shards == shard)."""
    import time

    from spark_core import schemas
    from spark_core.rollout.base import SamplingSpec, make_backend

    cfg = cfg_of(config_json)
    rows = rows_of(prompts, schemas.PROMPTS)[shard::n_shards]
    meta = provenance(cfg, "rollout", ("model", "rollout"), tag=tag, seed=str(seed), shard=str(shard))
    if not rows:
        return to_sd([], schemas.ROLLOUTS, meta)
    r = cfg.rollout
    t0 = time.time()
    backend = make_backend(r.backend, policy.download(), cfg.model, r)
    spec = SamplingSpec(n=r.n_samples, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                        seed=seed * 1000 + shard)
    samples = backend.generate(rows, spec, desc=f"rollout[{tag}:{shard}]")
    kinds = {row["prompt_id"]: (row["kind"], row["answer"]) for row in rows}
    out = [
        {"prompt_id": s.prompt_id, "rollout_id": f"{s.prompt_id}#{tag}.{s.sample_index}", "kind": kinds[s.prompt_id][0],
         "sample_index": s.sample_index, "answer": kinds[s.prompt_id][1], "response": s.response,
         "prompt_token_ids": s.prompt_token_ids, "response_token_ids": s.response_token_ids,
         "old_logprobs": s.logprobs, "finish_reason": s.finish_reason}
        for s in samples
    ]
    meta["spark.seconds"] = f"{time.time() - t0:.2f}"
    return to_sd(out, schemas.ROLLOUTS, meta)
