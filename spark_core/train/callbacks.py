"""Hooks into a GRPO pass (GRPOTrainer(callbacks=[...])), and the faults tests inject with them.

A test that holds the trainer passes the fault callbacks in. A test that runs a Flyte
task cannot hand it Python objects, so the task boundary (run_update) installs
`faults_from_env()`, which reads the SPARK_FAULT_* variables once per pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

FAULT_ENV = "SPARK_FAULT_NAN_STEPS"  # comma-separated global steps whose loss is forced to NaN
GRAD_FAULT_ENV = "SPARK_FAULT_NAN_GRAD_STEPS"  # global steps whose loss is finite but whose gradient is NaN
CRASH_AFTER_STEP_ENV = "SPARK_FAULT_CRASH_AFTER_STEP"  # crash after this optimizer step of a pass (1-based)


@dataclass(frozen=True)
class StepEnd:
    """What a finished optimizer step hands the callbacks (after its resume checkpoint)."""

    phase: str
    step: int  # optimizer step of this pass, 1-based
    global_step: int  # the step's global index (the schedule's position when it ran)
    skipped: bool  # non-finite: its gradient was dropped


class TrainerCallback:
    """Hooks of a GRPO pass; each default does nothing."""

    def on_pass_start(self, trainer, phase: str) -> None:
        """Before the first optimizer step of a pass (after a resume, if any)."""

    def on_loss(self, trainer, global_step: int, loss: torch.Tensor) -> torch.Tensor:
        """A micro-batch's loss before the non-finite check and backward; returns the loss to use."""
        return loss

    def on_step_end(self, trainer, end: StepEnd) -> None:
        """After an optimizer step, its log entry and its resume checkpoint."""


class _AtSteps(TrainerCallback):
    def __init__(self, steps):
        self.steps = set(steps)  # global steps


class NanLoss(_AtSteps):
    """The loss of the given global steps becomes NaN."""

    def on_loss(self, trainer, global_step, loss):
        return loss * float("nan") if global_step in self.steps else loss


class NanGradient(_AtSteps):
    """The given global steps keep a finite loss but get a NaN gradient."""

    def on_loss(self, trainer, global_step, loss):
        if global_step not in self.steps:
            return loss
        # sqrt'(0) is inf, times 0 is NaN: the added term has value 0 and a NaN gradient
        first = next(p for p in trainer.engine.module.parameters() if p.requires_grad)
        return loss + torch.sqrt(first.sum() * 0.0)


class CrashAfterStep(TrainerCallback):
    """Raise once optimizer step `step` of a pass (1-based) has finished, as a killed worker would stop."""

    def __init__(self, step: int, label: str = "CrashAfterStep"):
        self.step, self.label = step, label

    def on_step_end(self, trainer, end):
        if end.step == self.step:
            raise RuntimeError(f"{self.label}: simulated crash after step {end.step} of update[{end.phase}]")


def _steps(name: str) -> list[int]:
    return [int(s) for s in os.environ.get(name, "").split(",") if s.strip()]


class EnvFaults(TrainerCallback):
    """The SPARK_FAULT_* variables as callbacks, read at the start of every pass."""

    def __init__(self):
        self.active: list[TrainerCallback] = []

    def on_pass_start(self, trainer, phase):
        crash = int(os.environ.get(CRASH_AFTER_STEP_ENV, "0") or "0")
        self.active = [NanLoss(_steps(FAULT_ENV)), NanGradient(_steps(GRAD_FAULT_ENV))]
        if crash:
            self.active.append(CrashAfterStep(crash, f"{CRASH_AFTER_STEP_ENV}={crash}"))

    def on_loss(self, trainer, global_step, loss):
        for cb in self.active:
            loss = cb.on_loss(trainer, global_step, loss)
        return loss

    def on_step_end(self, trainer, end):
        for cb in self.active:
            cb.on_step_end(trainer, end)


def faults_from_env() -> list[TrainerCallback]:
    """The callbacks a task installs so that tests can inject faults through its environment."""
    return [EnvFaults()]
