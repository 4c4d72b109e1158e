"""The config: every field documented, parsing refuses what cannot run, presets load."""

from __future__ import annotations

import json

import pytest

from spark_core.config import PRESETS, ConfigError, SparkConfig, field_docs, load_config, main


def test_every_field_has_help():
    docs = field_docs()
    assert len(docs) > 100
    assert [k for k, _, h in docs if len(h) < 8] == []


@pytest.mark.parametrize("overrides, match", [
    ({"train.lrr": 1e-4}, "unknown config field 'train.lrr'"),
    ({"nosuch.lr": 1}, "unknown config section"),
    ({"train.lr": "fast"}, "train.lr: Input should be a valid number"),
    ({"recycle.arm": "both"}, "recycle.arm: Input should be 'policy', 'reward', 'policy_reward' or 'spark'"),
    ({"rollout.backend": "sglang"}, "rollout.backend"),
    ({"rollout.n_samples": 2.5}, "rollout.n_samples"),
    ({"loop.segment_steps": 0}, "segment_steps must be >= 1"),
    ({"train.train_batch_size": 50}, "not micro_batch_size"),
])
def test_bad_overrides_are_refused_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny-cpu", json.dumps(overrides))


def test_round_trip_and_presets():
    for name in PRESETS:
        cfg = load_config(name)
        again = SparkConfig.from_json(cfg.to_json())
        assert again == cfg and isinstance(again.train.adam_betas, tuple)
    with pytest.raises(ConfigError, match="extra|Unexpected"):
        SparkConfig.from_dict({"train": {"lr": 1e-4, "momentum": 0.9}})


def test_the_reference_prints_every_field(capsys):
    assert main(["--preset", "7b-8xh100"]) == 0
    out = capsys.readouterr().out
    assert "train.lr = 5e-07" in out and "rollout.backend = \"vllm\"" in out
    assert len([line for line in out.splitlines() if not line.startswith(" ")]) == len(field_docs())
