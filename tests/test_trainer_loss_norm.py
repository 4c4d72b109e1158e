"""The loss is a token mean over the whole optimizer step, however the step is split.

A per-micro-batch token mean weights a token of a micro-batch with few response tokens
more than one of a long micro-batch. Normalising each micro-batch's token sum by the
step's token count (over micro-batches and ranks) makes the step's gradient independent
of how it is cut into micro-batches.
"""

from __future__ import annotations

import random

import pytest
import torch

from spark_core.config import SparkConfig
from spark_core.train.engine import GRPOTrainer
from tests.helpers import first_step_gradient


LENGTHS = [8, 1, 6, 1]


def unequal_rollouts(tiny_dir):
    """2 prompts x 2 samples cut to very unequal response lengths (LENGTHS)."""
    from spark_core.data import generate
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    rows = generate(2, seed=21)
    samples = HFBackend(tiny_dir, SparkConfig().model).generate(rows, SamplingSpec(n=2, max_new_tokens=8, seed=4))
    scored = [dict(prompt_id=s.prompt_id, prompt_token_ids=s.prompt_token_ids,
                   response_token_ids=s.response_token_ids[:n], old_logprobs=s.logprobs[:n], reward=r)
              for s, n, r in zip(samples, LENGTHS, [1.0, 0.0, 0.0, 1.0])]
    return rows, scored


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    return unequal_rollouts(tiny_dir)


def _step_gradient(tiny_dir, rows, scored, micro: int) -> dict[str, torch.Tensor]:
    """The full gradient of the first optimizer step, taken just before the optimizer
    applies it (after all micro-batches and DeepSpeed's own scaling)."""
    cfg = SparkConfig()
    cfg.train.train_batch_size, cfg.train.micro_batch_size = 4, micro
    cfg.train.kl_coef = 0.0
    return first_step_gradient(GRPOTrainer(cfg, tiny_dir, tiny_dir), rows, scored)


def test_step_gradient_does_not_depend_on_the_micro_batch_split(tiny_dir, rollouts):
    rows, scored = rollouts
    # the two micro-batches of the split really hold different token counts (7 and 9)
    from spark_core.train.engine import _plan_steps

    order = list(range(4))
    random.Random(SparkConfig().train.seed).shuffle(order)  # the trainer's order at global step 0
    (ranks,) = _plan_steps(4, 2, 2, 1)
    counts = sorted(sum(len(scored[order[i]]["response_token_ids"]) for i in m) for m in ranks[0])
    assert counts == [7, 9]
    whole = _step_gradient(tiny_dir, rows, scored, micro=4)  # one micro-batch of 4
    split = _step_gradient(tiny_dir, rows, scored, micro=2)  # two of 2, unequal token counts
    assert whole.keys() == split.keys() and whole
    moved = [k for k in whole if whole[k].abs().max() > 0]
    assert len(moved) > len(whole) // 2  # a real gradient, not zeros
    for k in whole:  # equal up to float32 summation order
        err = float((split[k] - whole[k]).norm())
        assert err <= 1e-4 * float(whole[k].norm()) + 1e-9, (k, err, float(whole[k].norm()))


def test_step_token_mean_in_the_loss():
    """grpo_loss with denom: the micro-batch token sums add up to the step's token mean."""
    from spark_core.train.grpo import grpo_loss

    logp = torch.tensor([[-1.0, -2.0, -0.3], [-0.5, -0.7, 0.0]])
    old = logp.detach().clone()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    whole, _ = grpo_loss(logp, old, None, adv, mask, kl_coef=0.0)
    parts = [grpo_loss(logp[i:i + 1], old[i:i + 1], None, adv[i:i + 1], mask[i:i + 1], kl_coef=0.0, denom=4)[0]
             for i in range(2)]
    assert float(sum(parts)) == pytest.approx(float(whole))  # (-1 -1 -1 +2) / 4
    per_micro_mean = sum(grpo_loss(logp[i:i + 1], old[i:i + 1], None, adv[i:i + 1], mask[i:i + 1],
                                   kl_coef=0.0)[0] for i in range(2)) / 2
    assert float(per_micro_mean) != pytest.approx(float(whole))  # what the old normalisation gave
