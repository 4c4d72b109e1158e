"""Trainer numerics: fp32 LM head on bf16 models, the DeepSpeed bf16 config reduces
gradients in fp32, and the training forward runs through the DeepSpeed engine."""

from __future__ import annotations

import pytest
import torch

from spark_core.config import ModelConfig, SparkConfig, preset
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import ResponseLogprobs, build_batch, response_logprobs
from tests.helpers import scored_rollouts


@pytest.fixture(scope="module")
def batch_rows(tiny_dir):
    return scored_rollouts(tiny_dir, 2, data_seed=11, sample_seed=2)


def _batch(tiny_dir, rows, scored):
    by_id = {r["prompt_id"]: r for r in rows}
    proc = load_processor(tiny_dir, ModelConfig())
    return build_batch(proc, [by_id[s["prompt_id"]] for s in scored], [s["prompt_token_ids"] for s in scored],
                       [s["response_token_ids"] for s in scored])


def test_bf16_model_gives_fp32_logprobs_from_an_fp32_head(tiny_dir, batch_rows):
    model = load_model(tiny_dir, ModelConfig(dtype="bfloat16"))
    batch = _batch(tiny_dir, *batch_rows)
    with torch.no_grad():
        lp = response_logprobs(model, batch)
        hidden = model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
    assert lp.dtype == torch.float32
    mask = batch.response_mask[:, 1:].bool()
    targets = batch.input_ids[:, 1:][mask]
    h = hidden[:, :-1][mask]
    w = model.lm_head.weight
    exact = torch.log_softmax(h.double() @ w.double().T, -1).gather(-1, targets[:, None]).squeeze(-1)
    bf16_logits = torch.log_softmax(model.lm_head(h).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    got = lp[:, 1:][mask].double()
    err_fp32 = (got - exact).abs().max().item()
    err_bf16 = (bf16_logits.double() - exact).abs().max().item()
    assert err_fp32 < 1e-4, err_fp32
    assert err_bf16 > 10 * err_fp32  # what computing the logits in bf16 would cost


def test_wrapper_forward_equals_the_plain_computation(tiny_dir, batch_rows):
    model = load_model(tiny_dir, ModelConfig())
    batch = _batch(tiny_dir, *batch_rows)
    net = ResponseLogprobs(model)
    with torch.no_grad():
        a = response_logprobs(model, batch)
        b = net(**batch.forward_inputs())
    assert torch.equal(a, b)
    assert net.head.weight is model.lm_head.weight  # shared, not a copy
    assert sum(1 for _ in net.parameters()) == sum(1 for _ in model.parameters())


def test_bf16_deepspeed_config_reduces_and_accumulates_gradients_in_fp32():
    from spark_core.train.engine import deepspeed_config

    for name, world in (("7b-8xh100", 8), ("32b-16xh100", 16)):
        ds = deepspeed_config(preset(name), world, cuda=True)
        assert ds["bf16"]["enabled"] and ds["bf16"]["check_grad_overflow"]
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["communication_data_type"] == "fp32"
        assert ds["data_types"]["grad_accum_dtype"] == "fp32"
        assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == 64
    cpu = deepspeed_config(SparkConfig(), 1, cuda=False)
    assert not cpu["bf16"]["enabled"] and "communication_data_type" not in cpu


def test_training_forward_runs_through_the_engine(tiny_dir, batch_rows, monkeypatch):
    """Every decoder forward of a pass happens inside engine.forward (so ZeRO-3's hooks
    see it), none directly on the module."""
    from spark_core.train.engine import GRPOTrainer

    rows, scored = batch_rows
    cfg = SparkConfig()
    cfg.train.train_batch_size = cfg.train.micro_batch_size = 4
    trainer = GRPOTrainer(cfg, tiny_dir, tiny_dir)
    inside = {"now": False, "calls": 0}
    seen = []
    real_forward = trainer.engine.forward

    def forward(*a, **kw):
        inside["now"], inside["calls"] = True, inside["calls"] + 1
        try:
            return real_forward(*a, **kw)
        finally:
            inside["now"] = False

    monkeypatch.setattr(trainer.engine, "forward", forward)
    trainer.module.model.register_forward_pre_hook(lambda m, a: seen.append(inside["now"]))
    m = trainer.train_pass(rows, scored, "policy")
    assert m["steps"] == 1 and inside["calls"] >= 1
    assert seen and all(seen), seen
    # the trainer API's weight stream (ZeRO-2 here: the live tensors, by HF name)
    streamed = dict(trainer.full_state_dict_iter())
    assert list(streamed) == [n for n, _ in trainer.module.named_parameters()]
    assert all(torch.equal(streamed[n], p) for n, p in trainer.module.named_parameters())
