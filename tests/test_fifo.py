"""The recycled-prompt queue: the recycled pass runs on full batches, oldest first."""

import pytest

from spark_core.recycle.fifo import push_pop


def test_short_queue_waits_then_pops_oldest_first():
    batch, rest = push_pop([], [{"id": i} for i in range(3)], 4)
    assert batch == [] and [r["id"] for r in rest] == [0, 1, 2]
    batch, rest = push_pop(rest, [{"id": i} for i in range(3, 6)], 4)
    assert [r["id"] for r in batch] == [0, 1, 2, 3] and [r["id"] for r in rest] == [4, 5]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        push_pop([], [], 0)
