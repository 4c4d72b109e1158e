"""eval/answer_prob: the true answer's probability by teacher forcing, on the real tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from spark_core.config import load_config
from spark_core.data import generate
from spark_core.evaluate.core import evaluate
from spark_core.evaluate.likelihood import answer_logprobs, true_answer_metrics
from spark_core.model.loading import load_model, load_processor
from spark_core.rollout.hf import HFBackend
from spark_core.train.sft import encode_example, sft_step


@pytest.fixture()
def loaded(tiny_dir):
    cfg = load_config("tiny-cpu", "{}")
    return cfg, load_processor(tiny_dir, cfg.model), load_model(tiny_dir, cfg.model, for_training=True)


def test_prefers_what_the_model_was_taught(loaded):
    cfg, processor, model = loaded
    row = generate(1, seed=2)[0]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(5):
        sft_step(model, processor, [(row, *encode_example(processor, row, "\\boxed{7}"))], opt)
    lp7, lp3 = answer_logprobs(model, processor, [(row, "7"), (row, "3")])
    assert lp7 > lp3 and lp7 < 0.0
    assert model.training  # left as it was found


def test_batched_equals_one_at_a_time(loaded):
    # prompts of different lengths share a padded batch: padding must not change a score
    _, processor, model = loaded
    rows = generate(6, seed=5)
    pairs = [(r, r["answer"]) for r in rows] + [(rows[0], "123"), (rows[1], "0.5")]
    batched = answer_logprobs(model, processor, pairs, batch_size=8)
    single = [answer_logprobs(model, processor, [p], batch_size=1)[0] for p in pairs]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(v < 0 for v in batched)


def test_metrics_and_a_step_toward_the_truth_raises_them(loaded):
    _, processor, model = loaded
    rows = generate(8, seed=9)
    before = true_answer_metrics(model, processor, rows)
    lps = answer_logprobs(model, processor, [(r, r["answer"]) for r in rows])
    assert before["answer_logprob"] == pytest.approx(sum(lps) / len(lps))
    assert before["answer_prob"] == pytest.approx(sum(math.exp(v) for v in lps) / len(lps))
    assert 0.0 < before["answer_prob"] < 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    enc = [(r, *encode_example(processor, r, f"\\boxed{{{r['answer']}}}")) for r in rows]
    for _ in range(3):
        sft_step(model, processor, enc, opt)
    after = true_answer_metrics(model, processor, rows)
    assert after["answer_logprob"] > before["answer_logprob"] + 0.1
    assert after["answer_prob"] > before["answer_prob"]


def test_evaluate_reports_it_for_the_first_n_problems_only_when_asked(tiny_dir):
    from spark_core.evaluate.judge_set import balanced_judge_prompts

    rows = generate(5, seed=4)
    judge = balanced_judge_prompts(rows[:2], {r["prompt_id"]: ["99"] for r in rows[:2]}, seed=0)  # 6 prompts
    cfg = load_config("tiny-cpu", '{"eval.answer_likelihood_problems": 3}')
    backend = HFBackend(tiny_dir, cfg.model)
    _, metrics = evaluate(cfg, backend, rows, judge)
    expected = true_answer_metrics(backend.model, backend.processor, rows[:3])
    assert metrics["eval/answer_prob"] == pytest.approx(expected["answer_prob"])
    assert metrics["eval/answer_logprob"] == pytest.approx(expected["answer_logprob"])
    # the judge's: the right verdict (the judge prompt's label) on the first 3 judge prompts
    verdicts = true_answer_metrics(backend.model, backend.processor, judge[:3])
    assert {j["answer"] for j in judge[:3]} <= {"Yes", "No", "A", "B"}
    assert metrics["eval/judge_answer_prob"] == pytest.approx(verdicts["answer_prob"])
    assert metrics["eval/judge_answer_logprob"] == pytest.approx(verdicts["answer_logprob"])
    off = load_config("tiny-cpu", '{"eval.answer_likelihood_problems": 0}')
    _, metrics_off = evaluate(off, backend, rows, judge)
    assert not any("answer_prob" in k or "answer_logprob" in k for k in metrics_off)
    assert metrics_off["eval/accuracy"] == metrics["eval/accuracy"]
    assert metrics_off["eval/judge_accuracy"] == metrics["eval/judge_accuracy"]


def test_gpu_presets_leave_it_off():
    from spark_core.config import preset

    assert load_config("tiny-cpu", "{}").eval.answer_likelihood_problems == 128
    for name in ("7b-8xh100",):
        assert preset(name).eval.answer_likelihood_problems == 0
