"""The DeepSpeed GRPO update on the real tiny model: it learns, skips NaN steps, stops on a run of them."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from spark_core.config import SparkConfig
from spark_core.data import generate
from spark_core.model.loading import load_model
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.hf import HFBackend
from spark_core.train.callbacks import FAULT_ENV, GRAD_FAULT_ENV
from spark_core.train.engine import STATE_FILE, TrainingDiverged, run_update


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    cfg = SparkConfig()
    rows = generate(4, seed=0)
    samples = HFBackend(tiny_dir, cfg.model).generate(rows, SamplingSpec(n=4, max_new_tokens=8, seed=1))
    scored = [dict(prompt_id=s.prompt_id, prompt_token_ids=s.prompt_token_ids, response_token_ids=s.response_token_ids,
                   old_logprobs=s.logprobs, reward=float(s.sample_index == 0)) for s in samples]
    return rows, scored


def _cfg(**train):
    cfg = SparkConfig()
    cfg.train.train_batch_size = 8
    cfg.train.micro_batch_size = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_update_moves_toward_rewarded_samples(tiny_dir, rollouts, tmp_path):
    rows, scored = rollouts
    cfg = _cfg(lr=5e-3)
    m = run_update(cfg=cfg, model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                   out_dir=str(tmp_path / "out"), state_in=None, state_out=str(tmp_path / "state"), phase="policy")
    assert m["steps"] == 2 and m["skipped_steps"] == 0 and m["global_step"] == 2
    assert json.load(open(tmp_path / "state" / STATE_FILE))["global_step"] == 2
    # the rewarded sample (index 0) of each prompt became more likely, the others less
    from spark_core.model.loading import load_processor
    from spark_core.model.logprobs import build_batch, response_logprobs

    proc = load_processor(tiny_dir, cfg.model)
    before, after = load_model(tiny_dir, cfg.model), load_model(str(tmp_path / "out"), cfg.model)
    by_id = {r["prompt_id"]: r for r in rows}
    batch = build_batch(proc, [by_id[s["prompt_id"]] for s in scored], [s["prompt_token_ids"] for s in scored],
                        [s["response_token_ids"] for s in scored])
    with torch.no_grad():
        d = (response_logprobs(after, batch) - response_logprobs(before, batch)).sum(-1)
    good = torch.tensor([s["reward"] == 1.0 for s in scored])
    assert d[good].mean() > d[~good].mean()

    # the next update continues the same optimizer and step counter
    m2 = run_update(cfg=cfg, model_dir=str(tmp_path / "out"), ref_dir=tiny_dir, prompts=rows, scored=scored,
                    out_dir=str(tmp_path / "out2"), state_in=str(tmp_path / "state"),
                    state_out=str(tmp_path / "state2"), phase="recycled")
    assert m2["global_step"] == 4


def test_nan_step_is_skipped_and_weights_kept(tiny_dir, rollouts, tmp_path, monkeypatch):
    rows, scored = rollouts
    monkeypatch.setenv(FAULT_ENV, "0")
    m = run_update(cfg=_cfg(), model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                   out_dir=str(tmp_path / "out"), state_in=None, state_out=str(tmp_path / "state"), phase="policy")
    log = m["step_log"]
    assert log[0]["skipped"] and log[0]["lr"] == 0.0 and not log[1]["skipped"]
    assert m["skipped_steps"] == 1


def test_run_of_bad_steps_stops_with_clear_error(tiny_dir, rollouts, tmp_path, monkeypatch):
    rows, scored = rollouts
    monkeypatch.setenv(FAULT_ENV, "0,1")
    with pytest.raises(TrainingDiverged, match="2 consecutive optimizer steps") as e:
        run_update(cfg=_cfg(max_bad_steps=2), model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                   out_dir=str(tmp_path / "out"), state_in=None, state_out=str(tmp_path / "state"), phase="policy")
    assert tiny_dir in str(e.value)  # names the last good checkpoint
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_nan_gradient_step_is_skipped(tiny_dir, rollouts, tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN: the optimizer step is skipped, weights stay finite."""
    rows, scored = rollouts
    monkeypatch.setenv(GRAD_FAULT_ENV, "0")
    cfg = _cfg()
    cfg.train.train_batch_size = 16  # one optimizer step: the faulty one
    m = run_update(cfg=cfg, model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                   out_dir=str(tmp_path / "out"), state_in=None, state_out=str(tmp_path / "state"), phase="policy")
    assert m["step_log"][0]["skipped"] and not math.isfinite(m["step_log"][0]["grad_norm"])
    before, after = load_model(tiny_dir, cfg.model), load_model(str(tmp_path / "out"), cfg.model)
    for (name, p), q in zip(before.named_parameters(), after.parameters()):
        assert torch.isfinite(q).all(), name
        assert torch.equal(p, q), name


def test_recycled_pass_runs_at_its_share_of_the_learning_rate(tiny_dir, rollouts, tmp_path):
    rows, scored = rollouts
    lrs = {}
    for phase in ("policy", "recycled"):
        cfg = _cfg(lr=1e-3, warmup_ratio=0.0, min_lr_ratio=1.0, recycled_lr_scale=0.25)  # a constant schedule
        m = run_update(cfg=cfg, model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                       out_dir=str(tmp_path / phase), state_in=None, state_out=str(tmp_path / f"{phase}-state"),
                       phase=phase)
        lrs[phase] = m["lr"]
    assert lrs["policy"] == pytest.approx(1e-3) and lrs["recycled"] == pytest.approx(2.5e-4)
