"""The queue between recycling and the recycled ("reward") pass.

Recycled prompts wait in a FIFO; the recycled pass runs only when a full batch is
queued, and takes the oldest prompts first. Leftovers carry over to later epochs.
"""

from __future__ import annotations


def push_pop(queue: list[dict], new: list[dict], batch_size: int) -> tuple[list[dict], list[dict]]:
    """Append `new` to `queue`; return (a full batch from the front or [], the rest)."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    q = list(queue) + list(new)
    if len(q) < batch_size:
        return [], q
    return q[:batch_size], q[batch_size:]
