"""Which problems each epoch rolls out: uniform slices of seeded permutations, or equal
shares of each source (rollout.balance_sources, the tiny default)."""

from __future__ import annotations

import collections

from spark_core.config import load_config
from spark_core.data.batches import balanced_epoch_indices, epoch_indices, select_prompts
from spark_core.data.prepare import prepare_splits


def test_each_epoch_takes_every_source_in_equal_shares():
    cfg = load_config("tiny-cpu", "", {"rollout.prompts_per_epoch": 128})
    train, _, _ = prepare_splits(cfg.data)
    sources = sorted({r["source"] for r in train})
    assert len(sources) == 5
    seen = []
    for epoch in range(4):
        rows = select_prompts(cfg, train, epoch)
        counts = collections.Counter(r["source"] for r in rows)
        assert sorted(counts) == sources and max(counts.values()) - min(counts.values()) <= 1, counts
        seen += [r["prompt_id"] for r in rows]
    assert len(set(seen)) == len(seen)  # no problem twice before a source's rows run out
    assert [r["prompt_id"] for r in select_prompts(cfg, train, 2)] == seen[256:384]  # the same draw every time


def test_a_small_source_is_reused_only_after_all_its_rows():
    sources = ["a"] * 3 + ["b"] * 7
    stream = [i for e in range(6) for i in balanced_epoch_indices(sources, e, 4, seed=5)]
    a = [i for i in stream if sources[i] == "a"]
    b = [i for i in stream if sources[i] == "b"]
    assert len(a) == len(b) == 12
    for rows, n in ((a, 3), (b, 7)):
        for k in range(0, len(rows) - n + 1, n):  # each pass over a source is a permutation of it
            assert sorted(rows[k:k + n]) == sorted(set(rows[k:k + n])) and len(set(rows[k:k + n])) == n


def test_uniform_draws_are_the_permutation_slices_and_the_gpu_presets_use_them():
    cfg = load_config("tiny-cpu", "", {"rollout.balance_sources": False, "rollout.prompts_per_epoch": 16})
    train, _, _ = prepare_splits(cfg.data)
    ids = [r["prompt_id"] for r in select_prompts(cfg, train, 3)]
    assert ids == [train[i]["prompt_id"] for i in epoch_indices(len(train), 3, 16, cfg.seed)]
    assert not load_config("7b-8xh100").rollout.balance_sources  # as published: uniform over ViRL39K
    assert load_config("tiny-cpu").rollout.balance_sources
