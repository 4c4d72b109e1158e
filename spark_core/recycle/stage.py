"""The recycle stage on rows: rollouts to judge/reflection prompts, and the FIFO."""

from __future__ import annotations

from spark_core.recycle.build import recycle as build
from spark_core.recycle.fifo import push_pop


def recycled_batch_size(cfg) -> int:
    return cfg.recycle.recycled_batch or cfg.rollout.prompts_per_epoch


def recycle(cfg, prompts: list[dict], scored: list[dict], epoch: int) -> list[dict]:
    """This epoch's rollouts as judge and reflection prompts (PROMPTS rows)."""
    return build(prompts, scored, cfg.recycle, batch_size=recycled_batch_size(cfg), epoch=epoch)


def queue(cfg, waiting: list[dict], new: list[dict]) -> tuple[list[dict], list[dict]]:
    """FIFO of recycled prompts: (a full batch from the front or [], what keeps waiting)."""
    return push_pop(waiting, new, recycled_batch_size(cfg))
