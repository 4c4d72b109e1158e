"""benchmarks/research/judge_ceiling.py on the real tiny model, and the judge-set draws it shares
with the run's held-out judge set."""

from __future__ import annotations

import json

from benchmarks.research import judge_ceiling


def test_judge_draws_are_what_the_judge_prompts_show():
    from spark_core.data import generate
    from spark_core.evaluate.judge_set import balanced_judge_prompts, judge_draws

    rows = generate(6, seed=5)
    wrong = {rows[0]["prompt_id"]: ["蔺"], rows[1]["prompt_id"]: [str(rows[1]["answer"]), "99"]}
    draws = judge_draws(rows, wrong, seed=3)
    prompts = balanced_judge_prompts(rows, wrong, seed=3)
    assert [d["wrong"] for d in draws[:2]] == ["蔺", "99"]  # the truth itself is never shown as wrong
    assert [d["origin"] for d in draws] == ["rollout", "rollout"] + ["synthetic"] * 4
    for d, (right, wrong_p, pair) in zip(draws, zip(prompts[0::3], prompts[1::3], prompts[2::3])):
        filled = [t.fill(question=d["row"]["question"], answer=a) for t, a in
                  ((d["t_right"], d["truth"]), (d["t_wrong"], d["wrong"]))]
        assert [right["question"], wrong_p["question"]] == filled
        assert (right["answer"], wrong_p["answer"]) == (d["t_right"].correct_label, d["t_wrong"].wrong_label)
        assert pair["answer"] == ("A" if d["truth_first"] else "B")
        assert d["wrong"] != d["truth"]


def test_ceiling_scores_the_judge_set_with_the_models_own_answers(tiny_dir):
    from spark_core.config import load_config
    from spark_core.data import generate

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4, "rollout.max_new_tokens": 4,
                                              "eval.judge_samples": 3}))
    m = judge_ceiling.ceiling(cfg, tiny_dir, generate(5, seed=4, id_prefix="ev"))
    assert m["problems"] == 3
    # the untrained model writes no boxed answer: its own answer is never right and never
    # equal to the wrong one, so the self-consistent pointwise judge gets exactly half
    assert m["solve_accuracy"] == 0.0 and m["ceiling_pointwise"] == 0.5
    assert m["ceiling_pairwise"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert abs(m["ceiling_judge_accuracy"] - (2 * 0.5 + m["ceiling_pairwise"]) / 3) < 1e-9
    assert 0.0 <= m["judge_accuracy"] <= 1.0
