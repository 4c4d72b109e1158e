"""GRPO: group-normalised advantages, PPO-clip policy loss, k3 KL to the reference.

Policy and judge samples use the same loss; recycling only changes the prompts.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def group_advantages(prompt_ids: list[str], rewards: list[float], eps: float = 1e-9) -> list[float]:
    """(r - mean_group) / (std_group + eps), with the unbiased std of each prompt's group.

    All-equal groups (all right or all wrong) get advantage 0; so does a group of one.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompt_ids):
        groups[p].append(i)
    adv = [0.0] * len(rewards)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        r = torch.tensor([float(rewards[i]) for i in idx], dtype=torch.float64)
        a = (r - r.mean()) / (r.std(unbiased=True) + eps)
        for i, v in zip(idx, a.tolist()):
            adv[i] = v
    return adv


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative KL estimator exp(ref - logp) - (ref - logp) - 1."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)  # keeps exp finite when the policy drifts far
    return torch.exp(d) - d - 1.0


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, eps_clip: float = 0.2,
              kl_coef: float = 0.001, is_weight: torch.Tensor | None = None,
              denom: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level mean of the clipped surrogate plus KL.

    Without `denom` the mean is over this micro-batch's tokens. With `denom` (the
    response-token count of the whole optimizer step, over all micro-batches and ranks)
    the loss is this micro-batch's token sum / denom, so the step's summed gradient is the
    gradient of the token mean over the whole step, however it is split. The stats are
    always this micro-batch's token means ("tokens" is its token count).

    Shapes: logp/old_logp/ref_logp/mask [B, T]; advantages [B] (one value per sample,
    applied to every token, as the reward is terminal and gamma is 1). `is_weight`
    [B, T], if given, multiplies each token's surrogate (truncated importance sampling
    from the rollout engine's distribution to the trainer's; no gradient through it).
    """
    adv = advantages[:, None].to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    surr1 = ratio * adv
    surr2 = ratio.clamp(1.0 - eps_clip, 1.0 + eps_clip) * adv
    pg = -torch.min(surr1, surr2)
    if is_weight is not None:
        pg = pg * is_weight.detach().to(pg.dtype)
    per_token = pg
    kl_val = torch.zeros((), dtype=logp.dtype)
    if ref_logp is not None and kl_coef > 0:
        kl_tok = k3_kl(logp, ref_logp)
        kl_val = masked_mean(kl_tok, mask)
        per_token = pg + kl_coef * kl_tok
    if denom is None:
        loss = masked_mean(per_token, mask)
    else:
        loss = (per_token * mask.to(per_token.dtype)).sum() / max(float(denom), 1.0)
    pg_loss = masked_mean(pg, mask)
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > eps_clip).to(logp.dtype)
        stats = {
            "loss": float(pg_loss.detach()) + kl_coef * float(kl_val.detach()),
            "tokens": float(mask.sum()),
            "pg_loss": float(pg_loss.detach()),
            "kl": float(kl_val.detach()),
            "clip_frac": float(masked_mean(clipped, mask)),
            "ratio_mean": float(masked_mean(ratio.detach(), mask)),
        }
    return loss, stats


def lr_at(step: int, total_steps: int, base_lr: float, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * base_lr, clamped after the end.

    `step` counts every optimizer step (policy and recycled passes alike), so the
    schedule spans the whole run.
    """
    import math

    total_steps = max(1, total_steps)
    warm = max(1, int(round(warmup_ratio * total_steps))) if warmup_ratio > 0 else 0
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    min_lr = base_lr * min_lr_ratio
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
