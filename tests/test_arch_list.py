"""TORCH_CUDA_ARCH_LIST with Hopper/Blackwell suffixes ("9.0a") is rewritten so that
DeepSpeed's JIT op builder (fused Adam at the first GPU update) can parse it."""

from __future__ import annotations

import importlib
import os

import pytest

from spark_core.train.engine import deepspeed_arch_list, readable_arch_list_env


@pytest.mark.parametrize("value, expected", [
    ("9.0a", "9.0"),
    ("8.0;9.0a 10.0f+PTX", "8.0;9.0;10.0+PTX"),
    ("9.0+PTX", "9.0+PTX"),
    ("7.5 8.0 8.6", "7.5;8.0;8.6"),
    ("12.0a;9.0a;9.0", "12.0;9.0"),
])
def test_suffixes_dropped_ptx_kept(value, expected):
    assert deepspeed_arch_list(value) == expected


def _fused_adam_builder():
    # the CUDA builder module itself: on a CPU machine `deepspeed.ops.op_builder` resolves to CPU builders
    builder = importlib.import_module("deepspeed.ops.op_builder.fused_adam").FusedAdamBuilder()
    builder.jit_mode = True
    return builder


def test_deepspeed_parses_the_rewritten_list_and_not_the_original(monkeypatch):
    builder = _fused_adam_builder()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    with pytest.raises(ValueError, match="invalid literal"):
        builder.compute_capability_args()  # what the first GPU update hit on an H200 image
    readable_arch_list_env()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"
    builder.compute_capability_args()  # parses now (it raised above)


def test_a_readable_list_is_left_alone(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5 8.0 9.0+PTX")
    readable_arch_list_env()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5 8.0 9.0+PTX"
