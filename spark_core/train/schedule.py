"""The GRPO learning rate as a torch scheduler over the engine's global step."""

from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler

from spark_core.config import TrainConfig
from spark_core.train.grpo import lr_at


class GRPOSchedule(LRScheduler):
    """train.lr's warm-up and cosine decay (grpo.lr_at) at the engine's global step,
    times the pass's scale (train.recycled_lr_scale in the recycled pass).

    `last_epoch` is the global step of the next optimizer step: `step()` follows every
    optimizer step, skipped ones included, as the global step does, and `seek` puts the
    schedule where a pass starts or resumes. The lr is lr_at's value itself, not the base
    lr times a factor as LambdaLR computes it, so it is the same to the bit as lr_at's."""

    def __init__(self, optimizer, train: TrainConfig, total_steps: int, step: int = 0):
        self.train, self.total_steps, self.scale = train, total_steps, 1.0
        super().__init__(optimizer)
        self.seek(step)

    def get_lr(self) -> list[float]:
        t = self.train
        lr = lr_at(self.last_epoch, self.total_steps, t.lr, t.warmup_ratio, t.min_lr_ratio) * self.scale
        return [lr for _ in self.optimizer.param_groups]

    def step(self, epoch: None = None) -> None:
        """Move on one global step. Unlike LRScheduler.step, it does not check that the
        optimizer stepped first: a skipped step never reaches the optimizer, yet counts."""
        self.seek(self.last_epoch + 1, self.scale)

    def seek(self, step: int, scale: float = 1.0) -> None:
        """Put the schedule at global step `step` with the lr scale of the pass to come."""
        self.last_epoch, self.scale = step, scale
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
