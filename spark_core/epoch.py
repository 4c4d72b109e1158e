"""One SPARK epoch, written once, over an interface of stage operations.

    select prompts -> rollout (the policy as it is) -> reward -> recycle
      -> GRPO update on the problems
      -> the recycled prompts join the FIFO; a full batch is rolled out with the
         just-updated policy -> reward -> GRPO update on it
      -> evaluation when due (eval.every, and always after the last epoch)

The control flow depends only on the config (arm, passes, eval cadence), never on the
values the stages return, so the same function drives three runners whose handles
differ: Flyte promises in the fine-grained DAG (workflows/epoch_nodes.py), live
objects in one process group in a colocated segment (spark_core/segment.py), and
plain rows and checkpoint directories in the in-process runner (spark_core/run.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from spark_core.config import trained_passes


class Carry(NamedTuple):
    """What one epoch hands the next: the policy, its optimizer state, the FIFO."""

    policy: Any
    state: Any
    queue: Any


class StageOps(Protocol):
    """The stages of an epoch, over whatever handles a runner uses for artifacts."""

    def select(self, epoch: int) -> Any:
        """The problems of `epoch` (PROMPTS)."""

    def rollout(self, policy: Any, prompts: Any, tag: str, seed: int, epoch: int) -> Any:
        """G samples per prompt from `policy` (ROLLOUTS)."""

    def score(self, rollouts: Any, tag: str, epoch: int) -> tuple[Any, Any]:
        """Verifiable reward on every sample: (SCORED_ROLLOUTS, `{tag}/...` metrics)."""

    def recycle(self, prompts: Any, scored: Any, epoch: int) -> Any:
        """This epoch's rollouts as judge and reflection prompts (PROMPTS)."""

    def queue(self, queue: Any, recycled: Any, epoch: int) -> tuple[Any, Any]:
        """FIFO: (a full recycled batch or an empty one, what keeps waiting)."""

    def update(self, policy: Any, state: Any, prompts: Any, scored: Any, phase: str,
               epoch: int) -> tuple[Any, Any, Any]:
        """One GRPO pass: (policy, optimizer state, `{phase}/...` metrics)."""

    def evaluate(self, policy: Any, epoch: int) -> Any:
        """Held-out and judge metrics after `epoch` epochs."""

    def log(self, epoch: int, metrics: list[Any]) -> Any:
        """The epoch's metrics, merged (and logged where the runner tracks runs)."""


def eval_due(cfg, epoch: int) -> bool:
    """Whether the evaluation after `epoch` epochs runs (epoch 0 = the starting model):
    the start, every eval.every-th epoch and the last one."""
    every = max(1, int(cfg.eval.every))
    return epoch <= 0 or epoch >= cfg.epochs or epoch % every == 0


def policy_seed(cfg, epoch: int) -> int:
    return cfg.seed + 2 * epoch


def recycled_seed(cfg, epoch: int) -> int:
    return cfg.seed + 2 * epoch + 1


def spark_epoch(cfg, ops: StageOps, epoch: int, carry: Carry) -> tuple[Carry, Any]:
    """Epoch `epoch` (0-based): the new carry and what `ops.log` returned."""
    passes = trained_passes(cfg.recycle.arm)
    policy, state, queue = carry
    prompts = ops.select(epoch)
    rollouts = ops.rollout(policy, prompts, f"e{epoch}-policy", policy_seed(cfg, epoch), epoch)
    scored, reward_metrics = ops.score(rollouts, "policy", epoch)
    recycled = ops.recycle(prompts, scored, epoch)
    metrics = [reward_metrics]
    if "policy" in passes:
        policy, state, m = ops.update(policy, state, prompts, scored, "policy", epoch)
        metrics.append(m)
    if cfg.recycle.arm != "policy":
        batch, queue = ops.queue(queue, recycled, epoch)
        # rolled out by the policy just updated on this epoch's problems
        rrollouts = ops.rollout(policy, batch, f"e{epoch}-recycled", recycled_seed(cfg, epoch), epoch)
        rscored, rmetrics = ops.score(rrollouts, "recycled", epoch)
        metrics.append(rmetrics)
        if "recycled" in passes:
            policy, state, m = ops.update(policy, state, batch, rscored, "recycled", epoch)
            metrics.append(m)
    if eval_due(cfg, epoch + 1):
        metrics.append(ops.evaluate(policy, epoch + 1))
    return Carry(policy, state, queue), ops.log(epoch + 1, metrics)


def run_epochs(cfg, ops: StageOps, first_epoch: int, n_epochs: int, carry: Carry,
               after_epoch=None) -> tuple[Carry, list[Any]]:
    """Epochs first_epoch .. first_epoch + n_epochs - 1; `after_epoch(i, carry, logs)`
    runs after each (i = epochs done in this call), e.g. to save a resume slot."""
    logs = []
    for i in range(n_epochs):
        carry, logged = spark_epoch(cfg, ops, first_epoch + i, carry)
        logs.append(logged)
        if after_epoch is not None:
            after_epoch(i + 1, carry, logs)
    return carry, logs


def merge(metrics: list[dict]) -> dict:
    """One dict of an epoch's stage metrics (keys are distinct by stage prefix)."""
    out: dict = {}
    for m in metrics:
        out.update(m)
    return out
