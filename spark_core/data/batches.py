"""Which training prompts each co-evolution epoch uses."""

from __future__ import annotations

import random


def epoch_indices(n_rows: int, epoch: int, batch: int, seed: int) -> list[int]:
    """`batch` row indices for `epoch`: consecutive slices of seeded permutations, so
    every row is used once before any is reused (a new permutation per pass)."""
    if n_rows <= 0:
        raise ValueError("no training rows to draw prompts from")
    out: list[int] = []
    start = epoch * batch
    while len(out) < batch:
        pass_no, offset = divmod(start + len(out), n_rows)
        perm = list(range(n_rows))
        random.Random(seed * 1_000_003 + pass_no).shuffle(perm)
        take = min(batch - len(out), n_rows - offset)
        out.extend(perm[offset : offset + take])
    return out


def select_prompts(cfg, train: list[dict], epoch: int) -> list[dict]:
    """The problems of `epoch`: consecutive slices of seeded permutations of `train`."""
    idx = epoch_indices(len(train), epoch, cfg.rollout.prompts_per_epoch, cfg.seed)
    return [train[i] for i in idx]
