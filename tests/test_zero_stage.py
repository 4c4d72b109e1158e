"""One rank runs ZeRO-1 even when the preset asks for ZeRO-3 (nothing to partition, and
ZeRO-3 would gather every module's weights in every micro-batch); several ranks keep it.
The update is the same either way."""

from __future__ import annotations

import logging

import pytest
import torch

from spark_core.config import SparkConfig, load_config
from spark_core.train.engine import GRPOTrainer, deepspeed_config
from tests.helpers import scored_rollouts


def test_deepspeed_config_stage_by_world_size(caplog):
    cfg = load_config("7b-8xh100")
    assert cfg.train.zero_stage == 3
    assert deepspeed_config(cfg, 8, cuda=False)["zero_optimization"]["stage"] == 3
    with caplog.at_level(logging.INFO, logger="spark_core.train.engine"):
        one = deepspeed_config(cfg, 1, cuda=False)
    assert one["zero_optimization"]["stage"] == 1
    assert "world size 1: ZeRO stage 1 instead of train.zero_stage=3" in caplog.text
    cfg.train.single_rank_zero_stage = 3  # asked for explicitly
    assert deepspeed_config(cfg, 1, cuda=False)["zero_optimization"]["stage"] == 3


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=13, sample_seed=8)


def _trained(tiny_dir, rollouts, single_rank_stage: int):
    rows, scored = rollouts
    cfg = SparkConfig()
    cfg.train.zero_stage, cfg.train.single_rank_zero_stage = 3, single_rank_stage
    cfg.train.train_batch_size = cfg.train.micro_batch_size = 4
    cfg.train.lr = 5e-3
    cfg.train.freeze_vision = False  # the whole model, so the mean step below is over weights that all move
    trainer = GRPOTrainer(cfg, tiny_dir, tiny_dir)
    m = trainer.train_pass(rows, scored, "policy")
    return trainer, m, {n: t.detach().clone() for n, t in trainer.full_state_dict_iter()}


def test_single_rank_update_runs_zero_1_and_matches_zero_3(tiny_dir, rollouts):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    one, m1, w1 = _trained(tiny_dir, rollouts, 1)
    assert one.zero_stage == 1 and isinstance(one.engine.optimizer, DeepSpeedZeroOptimizer)
    # whole weights on the rank: no ZeRO-3 partitions to gather
    assert not any(hasattr(p, "ds_id") for p in one.module.parameters())
    three, m3, w3 = _trained(tiny_dir, rollouts, 3)
    assert three.zero_stage == 3 and all(hasattr(p, "ds_id") for p in three.module.parameters())
    assert m1["steps"] == m3["steps"] == 1 and m1["skipped_steps"] == 0
    assert m1["loss"] == pytest.approx(m3["loss"], rel=1e-5, abs=1e-7)
    assert m1["grad_norm"] == pytest.approx(m3["grad_norm"], rel=1e-4)
    assert w1.keys() == w3.keys()
    from spark_core.config import ModelConfig
    from spark_core.model.loading import load_model

    start = {n: p.detach() for n, p in load_model(tiny_dir, ModelConfig()).named_parameters()}
    step = sum(float((w1[n] - start[n]).abs().sum()) for n in w1) / sum(t.numel() for t in w1.values())
    worst = max(float((w1[n] - w3[n]).abs().max()) for n in w1)
    # the same Adam step (~6e-4 per weight on average) up to float rounding (~2e-5 at most)
    assert step > 1e-4 and worst < 1e-4 and worst < step / 5, (step, worst)
