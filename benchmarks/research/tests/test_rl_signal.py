"""benchmarks/research/rl_signal.py on the real tiny model: the fixed-answer reward really scores
against the replaced label, and each round's update moves the policy that the next
round samples from."""

from __future__ import annotations

import json
import os

import torch

from benchmarks.research import rl_signal
from tests.helpers import safetensors_weights


def test_rounds_update_the_policy_and_score_the_fixed_label(tiny_dir, tmp_path, monkeypatch):
    from spark_core.config import load_config
    from spark_core.data import generate
    from spark_core.reward import score_batch

    cfg = load_config("tiny-cpu", json.dumps({"train.lr": 1e-3, "epochs": 1, "recycle.arm": "policy",
                                              "rollout.n_samples": 2, "rollout.max_new_tokens": 4,
                                              "train.micro_batch_size": 4, "train.train_batch_size": 4}))
    rows = generate(2, seed=3)
    seen: list[tuple[list[str], list[str]]] = []

    def spy(responses, answers, **kw):
        # the untrained model never writes \\boxed{7}: alternate the rewards so that every
        # group is mixed and the update has a signal
        seen.append((list(responses), list(answers)))
        return [dict(sc, reward=float(i % 2)) for i, sc in enumerate(score_batch(responses, answers, **kw))]

    monkeypatch.setattr("spark_core.reward.score_batch", spy)
    out = rl_signal.rounds_of(cfg, tiny_dir, rows, "7", 1, str(tmp_path))
    assert [r["round"] for r in out] == [0, 1]
    assert all(r["reward"] == 0.5 for r in out)
    assert out[0]["kl"] >= 0.0 and "kl" not in out[1]
    assert all(set(answers) == {"7"} for _, answers in seen) and len(seen) == 2
    # the update wrote a checkpoint with changed weights, which round 1 samples from
    before, after = safetensors_weights(tiny_dir), safetensors_weights(os.path.join(tmp_path, "7-0"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
