"""benchmarks/research/supervised_control.py on the real tiny model: supervised steps on the given
problems with their true answers lower the loss on them, and each count of problems
is evaluated from its own checkpoint."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks.research import supervised_control
from tests.helpers import safetensors_weights


def test_supervised_steps_learn_the_given_answers(tiny_dir, tmp_path):
    from spark_core.config import load_config
    from spark_core.data import generate

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4}))
    rows = generate(4, seed=3)
    # the same four problems twice: the second step sees what the first learned from
    out = supervised_control.control(cfg, tiny_dir, rows + rows, generate(2, seed=4, id_prefix="ev"), 1e-3,
                                     [4, 8], str(tmp_path), batch=4)
    assert [(r["prompts"], r["steps"]) for r in out] == [(4, 1), (8, 2)]
    assert out[1]["loss_last"] < out[0]["loss_first"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and not math.isnan(r["accuracy"]) for r in out)
    assert all(0.0 < r["answer_prob"] <= 1.0 for r in out)  # the run's own p(answer) measure
    assert sorted(os.listdir(tmp_path)) == ["lr0.001-n4", "lr0.001-n8"]
    with pytest.raises(ValueError, match="problems"):
        supervised_control.control(cfg, tiny_dir, rows, rows, 1e-3, [5], str(tmp_path), batch=4)


def test_carried_warm_start_optimizer_is_continued(tiny_dir, tmp_path):
    """The warm start saves its AdamW state; continuing it takes a different first step than
    a fresh optimizer (whose first Adam step moves every weight by about lr)."""
    import torch

    from spark_core.config import load_config
    from spark_core.data import generate
    from spark_core.train.sft import run_bootstrap

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4, "bootstrap.steps": 3,
                                              "bootstrap.batch_size": 2}))
    rows = generate(6, seed=3)
    state = str(tmp_path / "opt.pt")
    start = str(tmp_path / "start")
    run_bootstrap(cfg, tiny_dir, rows, start, optimizer_out=state)
    saved = torch.load(state)
    assert saved["state"] and all(int(s["step"]) == 3 for s in saved["state"].values())
    ev = generate(2, seed=4, id_prefix="ev")
    fresh = supervised_control.control(cfg, start, rows[:4], ev, 1e-3, [4], str(tmp_path / "f"), batch=4)
    carried = supervised_control.control(cfg, start, rows[:4], ev, 1e-3, [4], str(tmp_path / "c"), batch=4,
                                         optimizer_state=state)
    assert fresh[0]["optimizer"] == "fresh" and carried[0]["optimizer"] == "warm start's"
    assert fresh[0]["loss_first"] == pytest.approx(carried[0]["loss_first"])  # same start, same batch
    w0 = safetensors_weights(start)
    wf = safetensors_weights(str(tmp_path / "f" / "lr0.001-n4"))
    wc = safetensors_weights(str(tmp_path / "c" / "lr0.001-n4-carried"))
    name = next(k for k in w0 if k.endswith("q_proj.weight"))
    step_f = (wf[name] - w0[name]).abs().mean().item()
    step_c = (wc[name] - w0[name]).abs().mean().item()
    assert step_f == pytest.approx(1e-3, rel=0.2)  # a fresh Adam's first step: ~lr per weight
    assert abs(step_c - step_f) > 0.1 * step_f


def test_noise_control_perturbs_every_weight_and_zero_noise_is_the_start(tiny_dir, tmp_path):
    from benchmarks.learning_sweep import evaluate
    from spark_core.config import load_config
    from spark_core.data import generate

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4}))
    ev = generate(3, seed=4, id_prefix="ev")
    zero = supervised_control.perturbed(cfg, tiny_dir, ev, 0.0, 0, str(tmp_path))
    assert zero["accuracy"] == evaluate(cfg, tiny_dir, ev, [])["accuracy"]
    supervised_control.perturbed(cfg, tiny_dir, ev, 0.01, 1, str(tmp_path))
    w0, w1 = safetensors_weights(tiny_dir), safetensors_weights(str(tmp_path / "noise0.01-1"))
    diffs = {k: (w1[k] - w0[k]).std().item() for k in w0 if w0[k].is_floating_point() and w0[k].numel() > 100}
    assert diffs and all(abs(d - 0.01) < 0.002 for d in diffs.values()), diffs


def test_annealed_schedule_warms_up_then_decays():
    assert supervised_control.annealed(0, 1) == 1.0
    ramp = [supervised_control.annealed(s, 20) for s in range(20)]
    assert ramp[:2] == [0.5, 1.0]  # two warm-up steps
    assert all(a > b > 0 for a, b in zip(ramp[1:], ramp[2:]))
    assert ramp[-1] == pytest.approx(1 / 19)


def test_annealed_control_runs_each_count_from_the_start(tiny_dir, tmp_path):
    """schedule="anneal": each count is its own run from the start, warmed up and decayed over
    its own steps, so a one-step run is a constant-lr step and a two-step run's second step
    is at half the rate."""
    from spark_core.config import load_config
    from spark_core.data import generate

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4}))
    rows = generate(8, seed=3)
    ev = generate(2, seed=4, id_prefix="ev")
    ann = supervised_control.control(cfg, tiny_dir, rows, ev, 1e-3, [4, 8], str(tmp_path / "a"), batch=4,
                                     schedule="anneal")
    const = supervised_control.control(cfg, tiny_dir, rows, ev, 1e-3, [4, 8], str(tmp_path / "c"), batch=4)
    assert [(r["prompts"], r["steps"], r["schedule"]) for r in ann] == [(4, 1, "anneal"), (8, 2, "anneal")]
    assert [r["schedule"] for r in const] == ["constant", "constant"]
    # every annealed count starts from the start's loss on the same first batch
    assert ann[0]["loss_first"] == pytest.approx(ann[1]["loss_first"])
    wa4 = safetensors_weights(str(tmp_path / "a" / "lr0.001-n4-annealed"))
    wc4 = safetensors_weights(str(tmp_path / "c" / "lr0.001-n4"))
    wa8 = safetensors_weights(str(tmp_path / "a" / "lr0.001-n8-annealed"))
    wc8 = safetensors_weights(str(tmp_path / "c" / "lr0.001-n8"))
    name = next(k for k in wa4 if k.endswith("q_proj.weight"))
    assert (wa4[name] - wc4[name]).abs().max().item() < 1e-6  # one step: warm-up ends at step 1
    assert (wa8[name] - wc8[name]).abs().max().item() > 1e-5  # second step at half the rate
    with pytest.raises(ValueError, match="schedule"):
        supervised_control.control(cfg, tiny_dir, rows, ev, 1e-3, [4], str(tmp_path / "x"), batch=4,
                                   schedule="cosine")
