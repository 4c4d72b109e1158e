"""pi_old comes from the trainer's own model, not from the rollout engine.

The rollout engine's log-probs (the `old_logprobs` column) differ from the trainer's by
kernel noise (vLLM) or worse; used as pi_old they put that noise into the PPO ratio. Here
the rollout log-probs are deliberately shifted: the trainer must still see a ratio of
exactly 1 at the first step (clip fraction 0, KL 0), report the shift as the gap, and
use it only for the optional truncated importance-sampling weight.
"""

from __future__ import annotations

import math

import pytest

from spark_core.config import SparkConfig
from spark_core.train.engine import GRPOTrainer


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    from spark_core.data import generate
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    rows = generate(2, seed=5)
    samples = HFBackend(tiny_dir, SparkConfig().model).generate(rows, SamplingSpec(n=2, max_new_tokens=8, seed=9))
    scored = []
    for j, s in enumerate(samples):  # unequal lengths, so the token mean of -A is not 0
        n = [8, 3, 6, 2][j % 4]
        scored.append(dict(prompt_id=s.prompt_id, prompt_token_ids=s.prompt_token_ids,
                           response_token_ids=s.response_token_ids[:n], old_logprobs=s.logprobs[:n],
                           reward=float(s.sample_index == 0)))
    return rows, scored


def _shifted(scored, delta):
    return [dict(s, old_logprobs=[x + delta for x in s["old_logprobs"]]) for s in scored]


def _cfg(**train):
    cfg = SparkConfig()
    cfg.train.train_batch_size = 4
    cfg.train.micro_batch_size = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_first_step_ratio_is_one_and_the_gap_is_logged(tiny_dir, rollouts):
    rows, scored = rollouts
    # lr 1e-6: one step moves a fan-in-initialised tiny model's log-probs by < 0.01 nat
    trainer = GRPOTrainer(_cfg(lr=1e-6), tiny_dir, tiny_dir)
    # the HF rollout computes its log-probs with the same code: no gap beyond padding noise
    m0 = trainer.train_pass(rows, scored, "policy")
    assert m0["rollout_logprob_gap_mean"] < 1e-4 and m0["rollout_logprob_gap_max"] < 1e-3
    assert m0["step_log"][0]["clip_frac"] == 0.0 and abs(m0["step_log"][0]["kl"]) < 1e-6

    # a rollout engine that disagrees by 0.3 nats everywhere (as rollout-as-pi_old, every
    # ratio would be e^-0.3 = 0.74, all clipped); the weights have moved one step already
    m1 = trainer.train_pass(rows, _shifted(scored, 0.3), "policy")
    first = m1["step_log"][0]
    assert first["clip_frac"] == 0.0
    # (plus the drift of the one step already taken from the rollout's weights, < 0.01 nat)
    assert m1["rollout_logprob_gap_mean"] == pytest.approx(0.3, abs=3e-3)
    assert m1["rollout_logprob_gap_max"] == pytest.approx(0.3, abs=1e-2)
    # KL to the reference at the first step of a pass is the drift of one step, not the shift
    assert 0 <= first["kl"] < 1e-4


def test_truncated_importance_sampling_weights_the_surrogate(tiny_dir, rollouts):
    rows, scored = rollouts
    # lr 0: the weights stay put, so both passes see the same policy
    trainer = GRPOTrainer(_cfg(lr=0.0, train_batch_size=4, micro_batch_size=4, kl_coef=0.0), tiny_dir, tiny_dir)
    low = _shifted(scored, -1.0)  # the engine found these tokens e^1 times less likely
    plain = trainer.train_pass(rows, low, "policy")["step_log"][0]["pg_loss"]
    assert abs(plain) > 1e-3 and math.isfinite(plain)
    trainer.cfg.train.tis_cap = 1.5  # min(e^1, 1.5) = 1.5 on every token
    capped = trainer.train_pass(rows, low, "policy")["step_log"][0]["pg_loss"]
    assert capped == pytest.approx(1.5 * plain, rel=1e-4)
    trainer.cfg.train.tis_cap = 5.0  # min(e^1, 5) = e on every token
    weighted = trainer.train_pass(rows, low, "policy")["step_log"][0]["pg_loss"]
    assert weighted == pytest.approx(math.e * plain, rel=1e-3)
