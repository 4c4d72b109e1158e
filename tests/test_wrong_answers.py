"""Synthetic wrong answers are really wrong, and judge labels built on them are right.

Every check goes through the project's verifier (math_verify in worker processes):
a wrong answer must score 0 against the truth, a correct one 1, and a judge prompt's
label must be the verdict the verifier implies.
"""

from __future__ import annotations

import random
import re

import pytest

from spark_core.data import generate
from spark_core.evaluate.judge_set import balanced_judge_prompts, build_judge_eval_set
from spark_core.recycle import build
from spark_core.recycle.build import near_miss, wrong_answers
from spark_core.recycle.templates import TEMPLATES_BY_ID, Template
from spark_core.reward import score_batch
from spark_core.train.sft import judge_examples

# ints, decimals (the "0.5" -> "0.50" case), fractions, negatives, percentages, letters,
# yes/no and expressions
FIXED = ["0", "7", "-3", "120", "0.5", "0.25", "1.50", "-2.75", "0.05", "3.0", "12.5", "1/2", "3/4", "-2/3",
         "\\frac{1}{2}", "\\dfrac{3}{8}", "-\\frac{2}{3}", "50\\%", "12.5%", "A", "(C)", "b", "Yes", "no",
         "2\\pi", "x+1", "\\sqrt{2}", "(1, 2)", "3x^2", "10^{3}"]


def _many_answers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = list(FIXED)
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            out.append(str(rng.randint(-200, 200)))
        elif kind == 1:
            out.append(f"{rng.uniform(-20, 20):.{rng.randint(1, 3)}f}")
        elif kind == 2:
            out.append(f"{rng.randint(-9, 9)}/{rng.randint(1, 12)}")
        elif kind == 3:
            out.append(f"\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(2, 12)}}}")
        else:
            out.append(f"{rng.choice(['', '-'])}0.{rng.randint(1, 9)}")
    return out


def _verdicts(answers: list[str], truths: list[str]) -> list[str]:
    return [s["status"] for s in score_batch([f"\\boxed{{{a}}}" for a in answers], truths)]


def test_no_wrong_answer_verifies_as_correct():
    truths = _many_answers(300, seed=3)
    for seed in (0, 1):
        wrong = wrong_answers(truths, random.Random(seed))
        assert len(wrong) == len(truths)
        assert all(w.strip() != t.strip() for w, t in zip(wrong, truths))
        assert _verdicts(wrong, truths) == ["wrong"] * len(truths)
    # the raw near misses do hit equivalent answers on decimals; the gate is what removes them
    rng = random.Random(0)
    raw = [near_miss("0.5", rng) for _ in range(50)] + [near_miss("2.50", rng) for _ in range(50)]
    assert set(raw) - {"0.50", "2.5"}  # they vary
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r) for r in raw)


def test_an_equivalent_candidate_is_drawn_again(monkeypatch):
    draws = iter(["0.50", "1/2", "\\frac{2}{4}", "0.7"])  # three equivalent to 0.5, then a wrong one
    monkeypatch.setattr(build, "near_miss", lambda truth, rng: next(draws))
    assert wrong_answers(["0.5"], random.Random(0)) == ["0.7"]


def test_no_wrong_answer_found_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(build, "near_miss", lambda truth, rng: "0.50")
    with pytest.raises(ValueError, match=r"'0\.5'.*4 candidates"):
        wrong_answers(["3", "0.5"], random.Random(0), max_draws=4)


# ---- labels of the built judge prompts -------------------------------------------------


def _shown(template: Template, question: str, text: str) -> dict[str, str]:
    """Invert template.fill: the answers a judge prompt shows."""
    pattern = ""
    for part in re.split(r"(\{(?:question|answer|answer_a|answer_b)\})", template.text):
        if part == "{question}":
            pattern += re.escape(question)
        elif part in ("{answer}", "{answer_a}", "{answer_b}"):
            pattern += f"(?P<{part[1:-1]}>.*?)"
        else:
            pattern += re.escape(part)
    m = re.fullmatch(pattern, text, re.DOTALL)
    assert m, (template.id, text)
    return m.groupdict()


def _opposite(template: Template, label: str) -> str:
    if template.kind == "pairwise":
        return {"A": "B", "B": "A"}[label]
    return template.wrong_label if label == template.correct_label else template.correct_label


def check_judge_labels(samples: list[tuple[dict, str, str]]) -> dict[str, int]:
    """samples: (judge prompt row, the plain question it was built on, the true answer).

    Every label gets reward 1 as \\boxed{label} and its opposite 0; a pointwise prompt
    labelled correct shows an answer that verifies, one labelled wrong an answer that
    does not; a pairwise prompt's labelled side verifies and the other side does not.
    Returns how many prompts of each verdict were checked."""
    labels, opposite, shown, truths, expect = [], [], [], [], []
    counts = {"correct": 0, "wrong": 0, "pairwise": 0}
    for row, question, truth in samples:
        t = TEMPLATES_BY_ID[row["template_id"]]
        label = row["answer"]
        labels.append(label)
        opposite.append(_opposite(t, label))
        got = _shown(t, question, row["question"])
        if t.kind == "pairwise":
            right, wrong = (got["answer_a"], got["answer_b"]) if label == "A" else (got["answer_b"], got["answer_a"])
            shown += [right, wrong]
            truths += [truth, truth]
            expect += ["ok", "wrong"]
            counts["pairwise"] += 1
        else:
            ok = label == t.correct_label
            shown.append(got["answer"])
            truths.append(truth)
            expect.append("ok" if ok else "wrong")
            counts["correct" if ok else "wrong"] += 1
    rewards = score_batch([f"\\boxed{{{x}}}" for x in labels + opposite], labels + labels)
    assert [r["reward"] for r in rewards] == [1.0] * len(labels) + [0.0] * len(labels)
    assert _verdicts(shown, truths) == expect
    return counts


def _rows_with_answers(answers: list[str]) -> list[dict]:
    rows = generate(len(answers), seed=11, image_size=32)
    for r, a in zip(rows, answers):
        r["answer"] = a
    return rows


def test_held_out_judge_set_labels_all_verify():
    rows = _rows_with_answers(FIXED + _many_answers(30, seed=5))
    pid = [r["prompt_id"] for r in rows]
    # rollout "wrong" answers that are in fact right, or unparseable, must not be shown as wrong
    rollouts = {pid[4]: ["0.50", "1/2", "\\frac{1}{2}"],  # all equivalent to 0.5
                pid[11]: ["0.5", "4/8"],  # truth 1/2
                pid[1]: ["8", "7.0"],  # truth 7: only "8" is wrong
                pid[2]: ["-3"]}  # equal to the truth
    out = balanced_judge_prompts(rows, rollouts, seed=0)
    assert len(out) == 3 * len(rows)
    origin = {r["source_prompt_id"]: r["source_rollout_id"] for r in out}
    assert origin[pid[4]] == origin[pid[11]] == origin[pid[2]] == "synthetic"
    assert origin[pid[1]] == "rollout"
    assert "8" in _shown(TEMPLATES_BY_ID[out[4]["template_id"]], rows[1]["question"], out[4]["question"])["answer"]
    counts = check_judge_labels([(o, r["question"], r["answer"]) for r, trio in zip(rows, zip(*[iter(out)] * 3))
                                 for o in trio])
    assert counts == {"correct": len(rows), "wrong": len(rows), "pairwise": len(rows)}


def test_warm_start_judge_examples_labels_all_verify():
    rows = _rows_with_answers(FIXED + _many_answers(20, seed=9))
    by_id = {r["prompt_id"]: r for r in rows}
    ex = judge_examples(rows, 200, random.Random(0))
    assert len(ex) == 200
    samples = []
    for row, target in ex:
        assert target == f"The verdict is \\boxed{{{row['answer']}}}."
        src = by_id[row["source_prompt_id"]]
        samples.append((row, src["question"], src["answer"]))
    counts = check_judge_labels(samples)
    assert min(counts.values()) > 20  # all three kinds are exercised


def test_judge_set_from_real_rollouts_labels_all_verify(tiny_dir):
    """The real stage: the tiny model's rollouts on eval problems, then the label check."""
    from spark_core.config import SparkConfig

    cfg = SparkConfig().with_overrides({"eval.judge_samples": 6, "rollout.max_new_tokens": 12})
    rows = generate(6, seed=21, image_size=56)
    rows[0]["answer"], rows[1]["answer"] = "0.5", "3/4"
    out = build_judge_eval_set(cfg, tiny_dir, rows)
    assert len(out) == 18
    check_judge_labels([(o, r["question"], r["answer"]) for r, trio in zip(rows, zip(*[iter(out)] * 3))
                        for o in trio])
