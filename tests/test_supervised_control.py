"""benchmarks/supervised_control.py on the real tiny model: supervised steps on the given
problems with their true answers lower the loss on them, and each count of problems
is evaluated from its own checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("supervised_control",
                                               os.path.join(ROOT, "benchmarks", "supervised_control.py"))
supervised_control = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(supervised_control)


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
    assert sorted(os.listdir(tmp_path)) == ["lr0.001-n4", "lr0.001-n8"]
    with pytest.raises(ValueError, match="problems"):
        supervised_control.control(cfg, tiny_dir, rows, rows, 1e-3, [5], str(tmp_path), batch=4)
