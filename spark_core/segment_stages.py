"""The stage operations of a colocated segment: live objects in one process group.

The policy is the live trainer (its optimizer state inside it); the rollout engine
shares its GPUs (`sync` before generating, `release` before training). Generation is
split over data-parallel groups; everything else runs on rank 0 and is broadcast, so
every rank trains on the same rows. Each stage's rows are kept, with their epoch, as
the segment's artifacts.
"""

from __future__ import annotations

import time
from typing import Any

from spark_core.data.batches import select_prompts
from spark_core.epoch import merge
from spark_core.evaluate.core import evaluate
from spark_core.recycle.stage import queue as fifo
from spark_core.recycle.stage import recycle
from spark_core.reward.stage import score as score_rows
from spark_core.rollout.base import rollout_rows, shard_seed
from spark_core.train.metrics import pass_metrics


class SegmentStages:
    def __init__(self, cfg, *, trainer, engine, gen, train: list[dict], eval_prompts: list[dict],
                 judge_prompts: list[dict], artifacts: dict[str, list[dict]], bcast, rank: int, desc: str):
        self.cfg, self.trainer, self.engine, self.gen = cfg, trainer, engine, gen
        self.train, self.eval_prompts, self.judge_prompts = train, eval_prompts, judge_prompts
        self.artifacts, self.bcast, self.rank, self.desc = artifacts, bcast, rank, desc
        self.timings: dict[str, float] = {"rollout": 0.0, "train": 0.0, "sync": 0.0, "eval": 0.0, "checkpoint": 0.0}

    def _keep(self, name: str, rows: list[dict], epoch: int) -> None:
        self.artifacts[name].extend(dict(r, epoch=epoch) for r in rows)

    def _on_rank0(self, fn, *args):
        return self.bcast(fn(*args) if self.rank == 0 else None)

    def select(self, epoch: int) -> list[dict]:
        return select_prompts(self.cfg, self.train, epoch)

    def rollout(self, policy, prompts: list[dict], tag: str, seed: int, epoch: int) -> list[dict]:
        t = time.time()
        self.engine.sync(policy)
        self.timings["sync"] += time.time() - t
        t = time.time()
        rows = rollout_rows(self.cfg, self.gen, prompts, tag, shard_seed(seed, 0), desc=f"{self.desc}:rollout[{tag}]")
        self.engine.release()
        self.timings["rollout"] += time.time() - t
        self._keep("rollouts", rows, epoch)
        return rows

    def score(self, rollouts: list[dict], tag: str, epoch: int):
        scored, m = self._on_rank0(score_rows, self.cfg, rollouts, tag)
        self._keep("scored", scored, epoch)
        return scored, m

    def recycle(self, prompts: list[dict], scored: list[dict], epoch: int) -> list[dict]:
        out = self._on_rank0(recycle, self.cfg, prompts, scored, epoch)
        self._keep("recycled", out, epoch)
        return out

    def queue(self, queue: list[dict], recycled: list[dict], epoch: int):
        return fifo(self.cfg, queue, recycled)

    def update(self, policy, state, prompts: list[dict], scored: list[dict], phase: str, epoch: int):
        if not scored:  # nothing recycled this epoch: the policy carries over
            return policy, state, {f"{phase}/steps": 0}
        t = time.time()
        m, steps = pass_metrics(phase, policy.train_pass(prompts, scored, phase))
        self.timings["train"] += time.time() - t
        self._keep("steps", steps, epoch)
        return policy, state, m

    def evaluate(self, policy, epoch: int) -> dict:
        t = time.time()
        self.engine.sync(policy)
        results, m = evaluate(self.cfg, self.gen, self.eval_prompts, self.judge_prompts)
        self.engine.release()
        results, m = self.bcast((results, m))
        self.timings["eval"] += time.time() - t
        self._keep("eval", results, epoch)
        return m

    def log(self, epoch: int, metrics: list[Any]) -> dict:
        return merge(metrics)
