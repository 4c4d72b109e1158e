"""Verifiable reward: last \\boxed{} answer checked with math_verify, per-sample timeout."""

from __future__ import annotations

import json
import time

from flytekit import Cache, task
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.cache_versions import CACHE_VERSIONS
from tasks.common import cfg_of, provenance, rows_of, to_sd
from tasks.resources import LIGHT


@task(cache=Cache(version=CACHE_VERSIONS["reward"]), container_image=light_image, resources=LIGHT)
def score_rollouts(config_json: str, shards: list[StructuredDataset], tag: str) -> tuple[StructuredDataset, str]:
    from spark_core import schemas
    from spark_core.reward import score_batch

    cfg = cfg_of(config_json)
    t0 = time.time()
    rows = [r for sd in shards for r in rows_of(sd, schemas.ROLLOUTS)]
    scores = score_batch([r["response"] for r in rows], [r["answer"] for r in rows],
                         timeout_s=cfg.reward.timeout_s, workers=cfg.reward.workers)
    for r, s in zip(rows, scores):
        r.update(reward=float(s["reward"]), extracted=s["extracted"], verify_status=s["status"], verify_ms=s["ms"])
    n = max(1, len(rows))
    metrics = {f"{tag}/samples": len(rows), f"{tag}/reward_mean": sum(r["reward"] for r in rows) / n,
               f"{tag}/no_boxed_rate": sum(r["verify_status"] == "no_boxed" for r in rows) / n,
               f"{tag}/timeout_rate": sum(r["verify_status"] == "timeout" for r in rows) / n,
               f"{tag}/truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / n,
               f"{tag}/response_tokens": sum(len(r["response_token_ids"]) for r in rows) / n,
               f"time/reward_{tag}": time.time() - t0}
    for kind in sorted({r["kind"] for r in rows}):
        k = [r["reward"] for r in rows if r["kind"] == kind]
        metrics[f"{tag}/reward_mean/{kind}"] = sum(k) / len(k)
    return to_sd(rows, schemas.SCORED_ROLLOUTS, provenance(cfg, "reward", ("reward",), tag=tag)), json.dumps(metrics)
