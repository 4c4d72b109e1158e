"""The per-GPU memory arithmetic of a colocated segment (spark_core/memory_budget.py) and
its refusal at config time."""

from __future__ import annotations

import json

import pytest

from spark_core.config import load_config, preset
from spark_core.memory_budget import (GIB, PRESET_MODELS, ModelSize, budget_for, colocated_budget,
                                      effective_zero_stage, model_size_from_dir, trainer_gib)


def test_zero3_trainer_state_per_gpu():
    n, w = 8.3e9, 8
    t = trainer_gib(n, w, 3, reference=True)
    # bf16 weights 2N/W, fp32 master + Adam m, v 12N/W, fp32 gradients 4N/W, bf16 reference 2N/W
    assert t["weights"] == pytest.approx(2 * n / w / GIB)
    assert t["master weights + Adam"] == pytest.approx(12 * n / w / GIB)
    assert t["gradients (fp32)"] == pytest.approx(4 * n / w / GIB)
    assert t["reference model"] == pytest.approx(2 * n / w / GIB)
    # 1e9 live bf16 parameters and a 5e8-element fp32 reduce bucket
    assert t["DeepSpeed buffers"] == pytest.approx(4e9 / GIB)
    assert sum(t.values()) == pytest.approx(20 * n / w / GIB + 4e9 / GIB + 3.0)
    # without partitioning the whole model sits on the GPU: 2N + 12N + 4N (+ 2N reference)
    whole = trainer_gib(n, 1, 0, reference=True)
    assert whole["weights"] + whole["master weights + Adam"] + whole["gradients (fp32)"] == pytest.approx(18 * n / GIB)
    assert whole["reference model"] == pytest.approx(2 * n / GIB)


def test_7b_preset_fits_with_its_own_engine_budget():
    cfg = load_config("7b-8xh100")
    assert cfg.loop.mode == "segment" and cfg.rollout.colocated_gpu_memory_utilization == 0.45
    b = budget_for(cfg)
    assert b.fits and b.zero_stage == 3 and b.world == 8
    assert b.trainer_gib == pytest.approx(26.1, abs=0.1)
    assert b.engine_weights_gib == pytest.approx(8.3e9 * 2 / GIB)  # a full bf16 copy per rank (TP 1)
    # KV per token: 2 (K, V) x 28 layers x 4 KV heads x 128 x 2 bytes
    assert b.kv_bytes_per_token == 2 * 28 * 4 * 128 * 2
    assert b.kv_floor_gib == pytest.approx(128000 * 57344 / GIB)
    assert 0.3 < b.min_utilization < 0.45 < b.max_utilization < 0.7


def test_a_budget_that_cannot_fit_is_refused_with_the_arithmetic():
    # the rollout pods' 0.85, given to the colocated engine, leaves the trainer no room
    with pytest.raises(ValueError, match=r"0\.85 x 79\.1 = 67\.2 GiB against 53\.0 GiB free after the trainer") as e:
        load_config("7b-8xh100", json.dumps({"rollout.colocated_gpu_memory_utilization": 0.85}))
    assert "trainer 26.1 GiB per GPU" in str(e.value) and "from 0.33 to 0.67 fit" in str(e.value)
    # too small: no room for a 128k-token sequence beside the weights
    with pytest.raises(ValueError, match="one 128000-token sequence needs 6.8 GiB"):
        load_config("7b-8xh100", json.dumps({"rollout.colocated_gpu_memory_utilization": 0.3}))
    # 32B: ~46 GiB of trainer state per GPU and a ~51 GiB TP-2 engine cannot share 80 GB
    cfg = preset("32b-16xh100")
    assert cfg.loop.mode == "dag" and budget_for(cfg) is None
    with pytest.raises(ValueError, match="No utilization fits"):
        load_config("32b-16xh100", json.dumps({"loop.mode": "segment"}))


def test_no_budget_where_the_engine_has_its_gpu_to_itself():
    assert budget_for(load_config("tiny-cpu")) is None  # HF rollouts on CPU
    assert budget_for(load_config("7b-8xh100", json.dumps({"loop.mode": "dag"}))) is None


def test_h200_and_tensor_parallel_change_the_arithmetic():
    m = PRESET_MODELS["32b-16xh100"]
    on_h100 = colocated_budget(m, gpu_gib=79.1, utilization=0.4, world=16, zero_stage=3, tensor_parallel=4)
    assert on_h100.engine_weights_gib == pytest.approx(33.5e9 * 2 / 4 / GIB)
    assert on_h100.kv_bytes_per_token == 2 * 64 * 2 * 128 * 2  # 8 KV heads over 4 ranks
    assert on_h100.fits
    on_h200 = colocated_budget(m, gpu_gib=139.8, utilization=0.5, world=16, zero_stage=3, tensor_parallel=2)
    assert on_h200.fits


def test_single_rank_runs_zero_1():
    assert effective_zero_stage(3, 1) == 1 and effective_zero_stage(2, 1) == 1 and effective_zero_stage(0, 1) == 0
    assert effective_zero_stage(3, 8) == 3 and effective_zero_stage(2, 2) == 2


def test_model_size_from_a_checkpoint_directory(tiny_dir):
    from spark_core.config import SparkConfig
    from spark_core.model.loading import load_model

    size = model_size_from_dir(tiny_dir)
    cfg = json.load(open(f"{tiny_dir}/config.json"))
    text = cfg.get("text_config") or cfg
    model = load_model(tiny_dir, SparkConfig().model, device="cpu")
    # every stored tensor counted once (a tied LM head is stored once)
    assert size.params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=1e-3)
    assert (size.layers, size.kv_heads) == (text["num_hidden_layers"], text["num_key_value_heads"])
    assert isinstance(size, ModelSize) and model_size_from_dir(str(tiny_dir) + "/missing") is None
