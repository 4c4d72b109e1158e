"""A skipped (non-finite) step leaves the weights AND the optimizer state untouched.

With lr 0 alone, Adam would still decay its moments and advance its step count, so the
next good step would be taken with different bias corrections and momenta.
"""

from __future__ import annotations

import pytest
import torch

from spark_core.config import SparkConfig
from spark_core.train.callbacks import FAULT_ENV, GRAD_FAULT_ENV, faults_from_env
from spark_core.train.engine import GRPOTrainer
from tests.helpers import scored_rollouts


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=7, sample_seed=3)


def _optimizer_state(trainer) -> dict[str, torch.Tensor]:
    """Adam's state (step, exp_avg, exp_avg_sq) and the fp32 weights it updates."""
    inner = trainer.engine.optimizer.optimizer  # the torch optimizer inside ZeRO
    out = {}
    for gi, group in enumerate(inner.param_groups):
        for pi, p in enumerate(group["params"]):
            out[f"{gi}.{pi}.weight"] = p.detach().clone()
            for k, v in inner.state.get(p, {}).items():
                out[f"{gi}.{pi}.{k}"] = (v.detach().clone() if torch.is_tensor(v) else torch.tensor(float(v)))
    return out


@pytest.mark.parametrize("fault_env", [FAULT_ENV, GRAD_FAULT_ENV])
def test_skipped_step_leaves_optimizer_state_untouched(tiny_dir, rollouts, monkeypatch, fault_env):
    rows, scored = rollouts
    cfg = SparkConfig()
    cfg.train.train_batch_size = cfg.train.micro_batch_size = 4
    cfg.train.lr = 1e-3
    trainer = GRPOTrainer(cfg, tiny_dir, tiny_dir, callbacks=faults_from_env())
    good = trainer.train_pass(rows, scored, "policy")  # global step 0: Adam's state exists afterwards
    assert good["skipped_steps"] == 0
    before = _optimizer_state(trainer)
    assert any(k.endswith("exp_avg_sq") and v.abs().sum() > 0 for k, v in before.items())
    steps_before = {k: v for k, v in before.items() if k.endswith(".step")}
    assert steps_before and all(float(v) == 1.0 for v in steps_before.values())

    monkeypatch.setenv(fault_env, "1")  # global step 1 is non-finite
    bad = trainer.train_pass(rows, scored, "recycled")
    assert bad["step_log"][0]["skipped"] and bad["skipped_steps"] == 1
    after = _optimizer_state(trainer)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed in a skipped step"

    # the next good step continues exactly from the state before the skipped one
    monkeypatch.delenv(fault_env)
    nxt = trainer.train_pass(rows, scored, "policy")
    assert not nxt["step_log"][0]["skipped"]
    assert all(float(v) == 2.0 for k, v in _optimizer_state(trainer).items() if k.endswith(".step"))
