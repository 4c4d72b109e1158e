"""The reward stage on rows: verifier scores on every rollout, and its metrics."""

from __future__ import annotations

import time

from spark_core.reward.verifier import score_batch


def score(cfg, rollouts: list[dict], tag: str) -> tuple[list[dict], dict[str, float]]:
    """Verifiable reward on every rollout: SCORED_ROLLOUTS rows and `{tag}/...` metrics."""
    t0 = time.time()
    rows = [dict(r) for r in rollouts]
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
    return rows, metrics
