"""GRPO pieces against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spark_core.config import SparkConfig, total_optimizer_steps
from spark_core.train.grpo import group_advantages, grpo_loss, k3_kl, lr_at


def test_group_advantages_hand_computed():
    ids = ["a", "a", "a", "a", "b", "b", "c"]
    r = [1, 0, 0, 0, 1, 1, 1]
    adv = group_advantages(ids, r)
    # group a: mean 0.25, unbiased std sqrt(0.25) = 0.5
    assert adv[0] == pytest.approx(0.75 / 0.5, rel=1e-6)
    assert adv[1] == pytest.approx(-0.25 / 0.5, rel=1e-6)
    assert adv[4] == 0.0 and adv[5] == 0.0  # all correct: no signal
    assert adv[6] == 0.0  # a group of one


def test_k3_kl_values():
    lp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(0.25) - math.log(0.5)
    assert k3_kl(lp, ref).item() == pytest.approx(math.exp(d) - d - 1, rel=1e-6)
    assert k3_kl(lp, lp).item() == 0.0


def test_grpo_loss_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    old = torch.tensor([[-1.0, -2.5, 0.0], [-0.5, -0.2, -0.5]])
    ref = old.clone()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0])
    loss, st = grpo_loss(logp, old, ref, adv, mask, eps_clip=0.2, kl_coef=0.1)
    ratio = torch.exp(logp - old)
    vals = []
    for i in range(2):
        for t in range(3):
            if mask[i, t]:
                r = ratio[i, t].item()
                a = adv[i].item()
                vals.append(-min(r * a, min(max(r, 0.8), 1.2) * a))
    pg = sum(vals) / len(vals)
    kls = [k3_kl(logp[i, t:t + 1], ref[i, t:t + 1]).item() for i in range(2) for t in range(3) if mask[i, t]]
    assert st["pg_loss"] == pytest.approx(pg, rel=1e-5)
    assert loss.item() == pytest.approx(pg + 0.1 * sum(kls) / len(kls), rel=1e-5)
    assert st["clip_frac"] == pytest.approx(2 / 5)  # ratios e^0.5 and e^-0.3 are outside [0.8, 1.2]


def test_lr_schedule_spans_every_step():
    total = 100
    lrs = [lr_at(s, total, 1.0, 0.1, 0.1) for s in range(total + 20)]
    assert lrs[0] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[total - 1] == pytest.approx(0.1, abs=1e-3)
    assert all(v == pytest.approx(0.1) for v in lrs[total:])  # clamped, never climbs back


def test_total_steps_counts_recycled_passes():
    cfg = SparkConfig()
    per_pass = -(-cfg.rollout.prompts_per_epoch * cfg.rollout.n_samples // cfg.train.train_batch_size)
    assert total_optimizer_steps(cfg) == cfg.epochs * 2 * per_pass
    cfg.recycle.arm = "policy"
    assert total_optimizer_steps(cfg) == cfg.epochs * per_pass


# ---- batch arithmetic: one optimizer step = micro x accumulation x world samples -----------


@pytest.mark.parametrize("name", ["tiny-cpu", "7b-8xh100", "32b-16xh100"])
def test_presets_make_the_step_the_schedule_counts(name):
    from spark_core.config import load_config, update_world_size, validate_train_batch
    from spark_core.train.engine import _plan_steps, deepspeed_config

    cfg = load_config(name)
    world = update_world_size(cfg)
    ga = validate_train_batch(cfg.train, world)
    assert cfg.train.micro_batch_size * ga * world == cfg.train.train_batch_size
    assert deepspeed_config(cfg, world)["gradient_accumulation_steps"] == ga
    # the engine's step plan over one pass has as many steps as the schedule counts per pass
    n = cfg.rollout.prompts_per_epoch * cfg.rollout.n_samples
    plan = _plan_steps(n, cfg.train.micro_batch_size, ga, world)
    assert all(sum(len(m) for r in step for m in r) == cfg.train.train_batch_size for step in plan)
    passes = 1 if cfg.recycle.arm in ("policy", "reward") else 2
    assert total_optimizer_steps(cfg) == cfg.epochs * passes * len(plan) * cfg.train.ppo_epochs


def test_gpu_presets_take_spark_64_sample_steps():
    from spark_core.config import load_config

    for name in ("7b-8xh100", "32b-16xh100"):
        assert load_config(name).train.train_batch_size == 64


def test_a_batch_the_ranks_cannot_make_is_refused_early():
    from spark_core.config import load_config, validate_train_batch

    # 16 ranks x micro 8 make 128-sample steps: not the 64 the schedule would count
    with pytest.raises(ValueError, match=r"train_batch_size=64 .* multiple of 128"):
        load_config("32b-16xh100", '{"train.micro_batch_size": 8}')
    cfg = SparkConfig()
    cfg.train.micro_batch_size, cfg.train.train_batch_size = 4, 6
    with pytest.raises(ValueError, match="multiple of 4"):
        validate_train_batch(cfg.train, 1)
    cfg.train.train_batch_size = 8
    assert validate_train_batch(cfg.train, 1) == 2
    with pytest.raises(ValueError, match="multiple of 16"):
        validate_train_batch(cfg.train, 4)


def test_trainer_refuses_a_bad_batch_before_building_models(tmp_path):
    from spark_core.train.engine import GRPOTrainer

    cfg = SparkConfig()
    cfg.train.micro_batch_size, cfg.train.train_batch_size = 4, 6
    # a model directory that does not exist: the batch check must fire first
    with pytest.raises(ValueError, match="train_batch_size=6"):
        GRPOTrainer(cfg, str(tmp_path / "no-model"), str(tmp_path / "no-model"))


def test_total_steps_follow_the_world_size():
    cfg = SparkConfig()
    cfg.train.micro_batch_size, cfg.train.train_batch_size = 4, 16
    n = cfg.rollout.prompts_per_epoch * cfg.rollout.n_samples
    assert total_optimizer_steps(cfg, world=2) == cfg.epochs * 2 * -(-n // 16)
    with pytest.raises(ValueError):
        total_optimizer_steps(cfg, world=3)


def test_importance_weight_scales_each_token_surrogate():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]])
    old = torch.tensor([[-1.1, -2.0], [-0.5, -0.2]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    w = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    _, plain = grpo_loss(logp, old, None, adv, mask, kl_coef=0.0)
    _, st = grpo_loss(logp, old, None, adv, mask, kl_coef=0.0, is_weight=w)
    ratio = torch.exp(logp - old)
    per_tok = [-min(ratio[0, 0] * 1, ratio[0, 0].clamp(0.8, 1.2) * 1) * 2.0,
               -min(ratio[0, 1] * 1, ratio[0, 1].clamp(0.8, 1.2) * 1) * 0.5,
               -min(ratio[1, 0] * -1, ratio[1, 0].clamp(0.8, 1.2) * -1) * 1.0]
    assert st["pg_loss"] == pytest.approx(float(sum(per_tok) / 3), rel=1e-6)
    assert st["pg_loss"] != pytest.approx(plain["pg_loss"])
