"""The GPU smoke (`python -m benchmarks.gpu_smoke`) at toy size on CPU: the same command a GPU runs,
through the real trainer (DeepSpeed, ZeRO-1 on the one rank), HF rollouts, reward, recycling and a
resume; and the MFU conventions it reports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_smoke_runs_at_toy_size(tmp_path):
    out = tmp_path / "smoke.json"
    # a fresh process group of its own: earlier in-process tests leave MASTER_PORT etc. set
    # in this process, whose group still listens on that port
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")  # toy size even where a GPU is present
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--toy",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("rollout tokens/s", "update tokens/s", "update MFU", "peak GPU memory",
                "rollout-vs-trainer log-prob gap", "KL at first step", "clip fraction at first step",
                "every loss finite"):
        assert f"| {row}" in proc.stdout
    res = json.loads(out.read_text())
    assert res["zero_stage"] == 1 and res["world_size"] == 1  # one rank: ZeRO-1 although the smoke asks for 3
    assert "| update MFU, verl/EasyR1 convention" in proc.stdout and res["update"]["tflops_anchor"] > 0
    assert res["flytekit_imported"] is False
    assert res["rollout"]["response_tokens"] > 0 and res["rollout"]["tokens_per_s"] > 0
    assert res["update"]["steps"] == 2 and res["update"]["tokens_per_s"] > 0
    # behaviour log-probs come from the same weights: no gap, ratio 1 at the first step
    assert res["logprob_gap"]["tokens"] > 0 and res["logprob_gap"]["max"] < 1e-4
    assert abs(res["update"]["first_step_kl"]) < 1e-6 and res["update"]["first_step_clip_frac"] == 0
    # the planted worked solutions give the groups a reward spread, so the update moves the weights
    assert 0 < res["reward_mean"] < 1
    assert all(math.isfinite(g) and g > 0 for g in res["update"]["grad_norms"])
    assert res["resume"]["crashed_after_step"] == 1 and res["resume"]["resumed_steps"] == 1
    assert res["resume"]["global_step"] == res["update"]["steps"] + res["resume"]["steps"]
    assert res["all_losses_finite"] is True and all(math.isfinite(x) for x in res["losses"])
    assert sum(res["recycled"].values()) > 0


def _smoke_module():
    import importlib

    return importlib.import_module("benchmarks.gpu_smoke")


@pytest.mark.parametrize("size, billions", [("3b", 3.75), ("7b", 8.29)])
def test_real_width_configs_have_the_published_sizes(size, billions):
    # built on the meta device: the full configs have Qwen2.5-VL-3B/7B-Instruct's parameter counts
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spark_core.model.tokenizer import build_qwen_tokenizer

    smoke = _smoke_module()
    qwen = build_qwen_tokenizer()
    cfg, full = smoke.real_width_config(size, 99, 99, qwen)
    assert cfg.image_token_id == qwen.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert cfg.text_config.num_hidden_layers == full and cfg.vision_config.depth == 32
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.005)
    cut, _ = smoke.real_width_config(size, 3, 5, qwen)
    assert cut.text_config.num_hidden_layers == 3 and cut.vision_config.depth == 5
    assert cut.vision_config.fullatt_block_indexes == [4] and cut.vision_config.out_hidden_size == cut.text_config.hidden_size


def test_real_width_model_dir_loads_and_generates(tmp_path):
    # the smoke's model directory at 3B width, cut to one layer and one vision block, on CPU
    from spark_core.config import ModelConfig
    from spark_core.data import generate
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    smoke = _smoke_module()
    cfg = ModelConfig(path=str(tmp_path / "m"), dtype="bfloat16")
    info = smoke.build_real_width(cfg.path, "3b", 1, 1, cfg, "cpu")
    assert info == {"text_layers": "1/36", "vision_blocks": "1/32"}
    backend = HFBackend(cfg.path, cfg, device="cpu")
    assert backend.model.config.text_config.hidden_size == 2048 and backend.model.dtype.is_floating_point
    (s,) = backend.generate(generate(1, seed=0), SamplingSpec(n=1, temperature=0.0, max_new_tokens=2))
    assert len(s.response_token_ids) >= 1 and len(s.logprobs) == len(s.response_token_ids)


def test_anchor_mfu_counts_flops_as_verl_and_easyr1_do():
    """6 x dense parameters (decoder projections and MLPs, embedding and LM head) per token
    plus 12 x seqlen^2 x head_dim x heads x layers, on the Qwen2.5-VL-7B text config."""
    from types import SimpleNamespace

    smoke = _smoke_module()
    c = SimpleNamespace(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=152064)
    per_layer = 3 * 3584 * 18944 + 3584 * (3584 + 2 * 4 * 128 + 3584)
    dense = 28 * per_layer + 2 * 152064 * 3584
    assert dense == 7_615_283_200  # the 7.6B "language model" parameters of benchmarks/step_time_estimate.py
    flops = smoke.anchor_flops(c, [1000, 3000])
    assert flops == 6 * dense * 4000 + 12 * (1000**2 + 3000**2) * 128 * 28 * 28 == 194_809_036_800_000
    # attention grows with the square of the length: one 4000-token sequence costs more than two of 2000
    assert smoke.anchor_flops(c, [4000]) - smoke.anchor_flops(c, [2000, 2000]) == 12 * 8_000_000 * 128 * 28 * 28
