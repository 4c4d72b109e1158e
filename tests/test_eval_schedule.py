"""eval.every and the prefix config that runs over several seeds share."""

from __future__ import annotations

from spark_core.config import SparkConfig, eval_due, prefix_view


def test_eval_due_start_every_nth_and_last_epoch():
    cfg = SparkConfig().with_overrides({"epochs": 7, "eval.every": 3})
    assert [e for e in range(8) if eval_due(cfg, e)] == [0, 3, 6, 7]
    assert all(eval_due(SparkConfig().with_overrides({"epochs": 4}), e) for e in range(5))  # default: every epoch
    assert [e for e in range(5) if eval_due(SparkConfig().with_overrides({"epochs": 4, "eval.every": 0}), e)] \
        == [0, 1, 2, 3, 4]


def test_seeds_and_eval_schedule_share_the_prefix_but_data_does_not():
    base = SparkConfig()
    loop_only = base.with_overrides({"seed": 7, "recycle.seed": 7, "train.seed": 7, "eval.every": 4,
                                     "recycle.arm": "policy", "epochs": 5})
    assert prefix_view(loop_only).to_json() == prefix_view(base).to_json() == base.to_json()
    assert loop_only.seed == 7 and loop_only.recycle.seed == 7  # the loop itself keeps them
    for other in ({"data.seed": 7}, {"model.tiny.seed": 7}, {"eval.judge_samples": 9}, {"bootstrap.steps": 9}):
        assert prefix_view(base.with_overrides(other)).to_json() != base.to_json(), other
