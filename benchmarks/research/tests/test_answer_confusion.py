"""benchmarks/research/answer_confusion.py: confusion tables and flipped answer classes,
on hand-made greedy results and on the real (untrained) tiny model."""

from __future__ import annotations

import json

from benchmarks.research import answer_confusion as ac


def _res(pid, src, answer, given, correct=None):
    return {"prompt_id": pid, "dataset": src, "answer": answer, "extracted": given,
            "correct": (given == answer) if correct is None else correct}


def test_a_class_that_flips_is_named_with_the_answer_it_became():
    before = [_res(f"p{i}", "total", "6", "6") for i in range(4)] + [_res("q0", "total", "5", "5"),
                                                                      _res("r0", "count", "2", "3")]
    after = [_res(f"p{i}", "total", "6", "5") for i in range(3)] + [_res("p3", "total", "6", "6"),
                                                                     _res("q0", "total", "5", "5"),
                                                                     _res("r0", "count", "2", "2")]
    flips = ac.flipped_classes(before, after)
    assert flips == [
        {"source": "count", "truth": "2", "problems": 1, "right_before": 0.0, "right_after": 1.0,
         "most_given_after": "2", "most_given_count": 1},
        {"source": "total", "truth": "6", "problems": 4, "right_before": 1.0, "right_after": 0.25,
         "most_given_after": "5", "most_given_count": 3}]
    assert ac.flipped_classes(before, before) == []


def test_confusion_table_counts_rows_by_truth_and_columns_by_answer():
    res = [_res("a", "s", "10", "10"), _res("b", "s", "2", "10"), _res("c", "s", "2", None, correct=False),
           _res("d", "s", "2", "2")]
    table = ac.confusion(res)["s"]
    lines = ac.confusion_table(table)
    # numeric order (2 before 10); no extracted answer is its own column
    assert lines[0] == "| true \\ greedy | 2 | 10 | - | right |"
    assert lines[2:] == ["| 2 | 1 | 1 | 1 | 1/3 |", "| 10 | 0 | 1 | 0 | 1/1 |"]


def test_greedy_answers_of_the_real_tiny_model(tiny_dir):
    from spark_core.config import load_config
    from spark_core.data import generate

    cfg = load_config("tiny-cpu", json.dumps({"eval.max_new_tokens": 4}))
    rows = generate(4, seed=2, id_prefix="ev")
    res = ac.greedy(cfg, tiny_dir, rows)
    table = ac.confusion(res)
    assert sum(sum(c.values()) for t in table.values() for c in t.values()) == 4
    # the untrained model writes no \boxed{}: every answer is in the "-" column, and
    # comparing it with itself flips nothing
    assert {g for t in table.values() for c in t.values() for g in c} == {ac.NONE}
    assert ac.flipped_classes(res, res) == []
