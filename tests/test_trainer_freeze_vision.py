"""train.freeze_vision keeps the vision encoder's weights fixed through a GRPO pass, and
only the encoder: the language model still learns."""

from __future__ import annotations

import pytest
import torch

from spark_core.config import SparkConfig
from spark_core.train.engine import GRPOTrainer, vision_tower
from tests.helpers import scored_rollouts


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=5, sample_seed=1)


def _changed(trainer, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in trainer.module.named_parameters() if not torch.equal(p.detach(), before[n])}


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_vision_keeps_only_the_encoder_fixed(tiny_dir, rollouts, freeze):
    rows, scored = rollouts
    cfg = SparkConfig()
    cfg.train.train_batch_size = cfg.train.micro_batch_size = 4
    cfg.train.lr = 1e-3
    cfg.train.freeze_vision = freeze
    trainer = GRPOTrainer(cfg, tiny_dir, tiny_dir)
    visual = {id(p) for p in vision_tower(trainer.module).parameters()}
    names = {n for n, p in trainer.module.named_parameters() if id(p) in visual}
    assert names and all(".visual." in f".{n}" for n in names)
    before = {n: p.detach().clone() for n, p in trainer.module.named_parameters()}
    m = trainer.train_pass(rows, scored, "policy")
    assert m["steps"] == 1 and m["skipped_steps"] == 0
    changed = _changed(trainer, before)
    assert changed - names, "the language model must still be updated"
    if freeze:
        assert not changed & names
        assert all(not p.requires_grad for n, p in trainer.module.named_parameters() if n in names)
    else:
        assert changed & names


def test_vision_tower_refuses_a_model_without_one():
    with pytest.raises(ValueError, match="freeze_vision"):
        vision_tower(torch.nn.Linear(2, 2))
