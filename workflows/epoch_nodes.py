"""The stage operations of spark_core.epoch as Flyte nodes: each call adds a cached task
node to the dynamic workflow being compiled and returns its promises.

Each task takes only the config sections it reads, so its cache key changes only with
them: a new `train.lr` reruns the updates but reuses the first epoch's rollouts.
"""

from __future__ import annotations

from functools import partial

from flytekit import map_task

from spark_core.config import SparkConfig
from tasks.data import select_prompts
from tasks.evaluate import evaluate_policy
from tasks.recycle import queue_recycled, recycle_rollouts
from tasks.reward import score_rollouts
from tasks.rollout import rollout_shard
from tasks.tracking import log_epoch
from tasks.update import update_policy


class FlyteStages:
    def __init__(self, cfg: SparkConfig, *, run_id, start, train, eval_prompts, judge_prompts):
        self.cfg, self.run_id, self.start = cfg, run_id, start
        self.train, self.eval_prompts, self.judge_prompts = train, eval_prompts, judge_prompts

    def select(self, epoch: int):
        return select_prompts(rollout=self.cfg.rollout, seed=self.cfg.seed, train=self.train,
                              epoch=epoch).with_overrides(name=f"select-e{epoch}")

    def rollout(self, policy, prompts, tag: str, seed: int, epoch: int):
        n = max(1, self.cfg.rollout.n_shards)
        return map_task(
            partial(rollout_shard, model=self.cfg.model, rollout=self.cfg.rollout, policy=policy, prompts=prompts,
                    tag=tag, sample_seed=seed, n_shards=n),
            min_success_ratio=1.0,
        )(shard=list(range(n)))

    def score(self, rollouts, tag: str, epoch: int):
        name = f"reward-e{epoch}" if tag == "policy" else f"reward-{tag}-e{epoch}"
        return score_rollouts(reward=self.cfg.reward, shards=rollouts, tag=tag).with_overrides(name=name)

    def recycle(self, prompts, scored, epoch: int):
        return recycle_rollouts(recycle=self.cfg.recycle, rollout=self.cfg.rollout, prompts=prompts, scored=scored,
                                epoch=epoch).with_overrides(name=f"recycle-e{epoch}")

    def queue(self, queue, recycled, epoch: int):
        q = queue_recycled(recycle=self.cfg.recycle, rollout=self.cfg.rollout, queue=queue, new=recycled,
                           epoch=epoch).with_overrides(name=f"queue-e{epoch}")
        return q.batch, q.queue

    def update(self, policy, state, prompts, scored, phase: str, epoch: int):
        c = self.cfg
        up = update_policy(model=c.model, train=c.train, rollout=c.rollout, recycle=c.recycle, cluster=c.cluster,
                           epochs=c.epochs, policy=policy, ref=self.start, prompts=prompts, scored=scored, state=state,
                           phase=phase).with_overrides(name=f"update-{phase}-e{epoch}")
        return up.policy, up.state, up.metrics

    def evaluate(self, policy, epoch: int):
        _, m = evaluate_policy(model=self.cfg.model, eval=self.cfg.eval, reward=self.cfg.reward, policy=policy,
                               eval_prompts=self.eval_prompts, judge_prompts=self.judge_prompts,
                               epoch=epoch).with_overrides(name=f"eval-e{epoch}")
        return m

    def log(self, epoch: int, metrics: list):
        return log_epoch(run_id=self.run_id, epoch=epoch, metrics=metrics)
