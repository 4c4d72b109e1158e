"""ZeRO-3 (gloo, CPU, tiny model): the policy and the reference are built partitioned,
an update runs, and the consolidated checkpoint reloads as a plain Hugging Face model."""

from __future__ import annotations

import os

import pytest
import torch

from spark_core.config import ModelConfig, SparkConfig
from spark_core.model.loading import load_model
from spark_core.train.engine import STATE_FILE, GRPOTrainer
from tests.helpers import safetensors_weights, scored_rollouts


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=13, sample_seed=8)




def test_zero3_partitions_policy_and_reference_and_saves_a_reloadable_checkpoint(tiny_dir, rollouts, tmp_path):
    import deepspeed

    rows, scored = rollouts
    cfg = SparkConfig()
    cfg.train.zero_stage = cfg.train.single_rank_zero_stage = 3  # ZeRO-3 on the one CPU rank, as on many GPUs
    cfg.train.train_batch_size = cfg.train.micro_batch_size = 4
    cfg.train.lr = 5e-3
    trainer = GRPOTrainer(cfg, tiny_dir, tiny_dir)
    plain = load_model(tiny_dir, ModelConfig())
    sizes = {n: p.numel() for n, p in plain.named_parameters()}

    # every parameter of the policy and of the reference is a ZeRO-3 partition with the
    # full size recorded; the big ones hold no data outside a forward
    policy = dict(trainer.module.named_parameters())
    assert policy.keys() == sizes.keys()
    for name, p in policy.items():
        assert hasattr(p, "ds_id") and p.ds_tensor is not None, name
        assert p.ds_numel == sizes[name], name
    embed = "model.language_model.embed_tokens.weight"
    assert policy[embed].numel() == 0 and policy[embed].ds_tensor.numel() == sizes[embed]
    assert isinstance(trainer.ref, deepspeed.DeepSpeedEngine)
    ref = dict(trainer.ref.module.policy.named_parameters())
    assert ref.keys() == sizes.keys()
    assert all(hasattr(p, "ds_id") and not p.requires_grad for p in ref.values())
    assert ref[embed].numel() == 0
    assert ref[embed].ds_id != policy[embed].ds_id  # a separate, frozen copy

    # the shards hold the checkpoint's weights (not a fresh initialisation)
    start_params = dict(plain.named_parameters())
    for name, t in trainer.full_state_dict_iter():
        assert torch.equal(t, start_params[name].detach()), name
    with deepspeed.zero.GatheredParameters(list(ref.values())):
        for name, p in ref.items():
            assert torch.equal(p.detach(), start_params[name].detach()), name

    m = trainer.train_pass(rows, scored, "policy")
    assert m["steps"] == 1 and m["skipped_steps"] == 0
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "kl", "grad_norm"))
    assert m["step_log"][0]["clip_frac"] == 0.0  # pi_old recomputed under ZeRO-3 too

    # full weights, gathered one layer at a time
    full = {n: t.clone() for n, t in trainer.full_state_dict_iter()}
    assert {n: t.numel() for n, t in full.items()} == sizes

    trainer.save_hf(str(tmp_path / "out"))
    trainer.save_state(str(tmp_path / "state"))
    saved, start = safetensors_weights(str(tmp_path / "out")), safetensors_weights(tiny_dir)
    assert saved.keys() == start.keys()
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # it trained
    reloaded = load_model(str(tmp_path / "out"), ModelConfig())  # plain transformers, no DeepSpeed
    for name, p in reloaded.named_parameters():
        assert torch.isfinite(p).all(), name
        assert torch.equal(p.detach(), full[name]), name

    # the saved state continues the optimizer and the step count in a new trainer
    nxt = GRPOTrainer(cfg, str(tmp_path / "out"), tiny_dir, state_in=str(tmp_path / "state"))
    assert nxt.global_step == 1
    m2 = nxt.train_pass(rows, scored, "recycled")
    assert m2["global_step"] == 2 and m2["skipped_steps"] == 0
    assert os.path.exists(tmp_path / "state" / STATE_FILE)
