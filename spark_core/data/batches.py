"""Which training prompts each co-evolution epoch uses."""

from __future__ import annotations

import random


def epoch_indices(n_rows: int, epoch: int, batch: int, seed: int) -> list[int]:
    """`batch` row indices for `epoch`: consecutive slices of seeded permutations, so
    every row is used once before any is reused (a new permutation per pass)."""
    return _stream(n_rows, epoch * batch, batch, seed)


def _stream(n_rows: int, start: int, batch: int, seed: int) -> list[int]:
    """Positions start .. start+batch-1 of the stream of seeded permutations of n_rows."""
    if n_rows <= 0:
        raise ValueError("no training rows to draw prompts from")
    out: list[int] = []
    while len(out) < batch:
        pass_no, offset = divmod(start + len(out), n_rows)
        perm = list(range(n_rows))
        random.Random(seed * 1_000_003 + pass_no).shuffle(perm)
        take = min(batch - len(out), n_rows - offset)
        out.extend(perm[offset : offset + take])
    return out


def balanced_epoch_indices(sources: list[str], epoch: int, batch: int, seed: int) -> list[int]:
    """`batch` row indices for `epoch`, an equal share (to within one) from each source.

    Each source's rows form a stream of seeded permutations (every row once before any
    is reused); the sources take turns, in sorted order, along one interleaved stream,
    and epoch e takes its e-th slice. So each epoch's task mix is the same, and one
    epoch's rollout reward compares with the next's."""
    if not sources:
        raise ValueError("no training rows to draw prompts from")
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    names = sorted(by_source)
    first, n = epoch * batch, len(names)

    def turns_before(j: int, s_no: int) -> int:  # stream positions < j that are this source's turns
        return max(0, -(-(j - s_no) // n))

    picked = {}  # source -> its rows for this epoch, in stream order
    for s_no, name in enumerate(names):
        start = turns_before(first, s_no)
        count = turns_before(first + batch, s_no) - start
        rows = by_source[name]
        picked[name] = [rows[k] for k in _stream(len(rows), start, count, seed + 7919 * (s_no + 1))]
    taken = {name: 0 for name in names}
    out = []
    for j in range(first, first + batch):
        name = names[j % n]
        out.append(picked[name][taken[name]])
        taken[name] += 1
    return out


def select_prompts(cfg, train: list[dict], epoch: int) -> list[dict]:
    """The problems of `epoch`: consecutive slices of seeded permutations of `train`, or,
    with rollout.balance_sources, of each source's rows in turn."""
    if cfg.rollout.balance_sources:
        idx = balanced_epoch_indices([str(r.get("source") or "") for r in train], epoch,
                                     cfg.rollout.prompts_per_epoch, cfg.seed)
    else:
        idx = epoch_indices(len(train), epoch, cfg.rollout.prompts_per_epoch, cfg.seed)
    return [train[i] for i in idx]
