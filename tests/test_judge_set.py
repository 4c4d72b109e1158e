"""The held-out judge set is balanced and its labels are right."""

from __future__ import annotations

from spark_core.data import generate
from spark_core.evaluate.judge_set import balanced_judge_prompts
from spark_core.recycle.templates import TEMPLATES_BY_ID


def test_three_balanced_prompts_per_problem_with_correct_labels():
    rows = generate(20, seed=4)
    wrong = {rows[0]["prompt_id"]: ["99"], rows[1]["prompt_id"]: [rows[1]["answer"]]}  # the 2nd is not wrong
    out = balanced_judge_prompts(rows, wrong, seed=0)
    assert len(out) == 60
    point = [r for r in out if r["kind"] == "pointwise"]
    pair = [r for r in out if r["kind"] == "pairwise"]
    correct = sum(r["answer"] == TEMPLATES_BY_ID[r["template_id"]].correct_label for r in point)
    assert correct == 20 and len(point) - correct == 20  # Yes/A for the truth, No/B for the wrong answer
    for r, src in zip(out[0::3], rows):
        assert f"{src['answer']}" in r["question"]
    assert "99" in out[1]["question"] and out[1]["source_rollout_id"] == "rollout"
    assert out[4]["source_rollout_id"] == "synthetic"  # a "wrong" rollout equal to the truth is not used
    for i, src in enumerate(rows):
        q, truth = src["question"], src["answer"]
        pw_wrong, pr = out[3 * i + 1], out[3 * i + 2]
        t = TEMPLATES_BY_ID[pw_wrong["template_id"]]
        cands = ["99"] + [str(int(truth) + d) for d in (-3, -2, -1, 1, 2, 3)]
        wrong_shown = next(w for w in cands if t.fill(question=q, answer=w) == pw_wrong["question"])
        a, b = (truth, wrong_shown) if pr["answer"] == "A" else (wrong_shown, truth)
        assert TEMPLATES_BY_ID[pr["template_id"]].fill(question=q, answer_a=a, answer_b=b) == pr["question"]
    assert {r["answer"] for r in pair} == {"A", "B"}
