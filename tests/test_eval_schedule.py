"""eval.every, and the stages before the loop taking no loop setting (so that runs over
several seeds, arms and learning rates share them from the cache)."""

from __future__ import annotations

from spark_core.config import SparkConfig
from spark_core.epoch import eval_due

# what only shapes the loop: runs that differ in these share the stages before it
LOOP_SETTINGS = {"seed", "epochs", "rollout", "recycle", "train", "loop", "cluster"}


def test_eval_due_start_every_nth_and_last_epoch():
    cfg = SparkConfig().with_overrides({"epochs": 7, "eval.every": 3})
    assert [e for e in range(8) if eval_due(cfg, e)] == [0, 3, 6, 7]
    assert all(eval_due(SparkConfig().with_overrides({"epochs": 4}), e) for e in range(5))  # default: every epoch
    assert [e for e in range(5) if eval_due(SparkConfig().with_overrides({"epochs": 4, "eval.every": 0}), e)] \
        == [0, 1, 2, 3, 4]


def test_the_stages_before_the_loop_take_no_loop_setting():
    from tasks.data import prepare_data
    from tasks.evaluate import evaluate_policy, judge_eval_set
    from tasks.model import base_model, bootstrap

    from tests.helpers import config_inputs

    taken = {}
    for t in (prepare_data, base_model, bootstrap, judge_eval_set, evaluate_policy):
        taken[t.name] = set(config_inputs(t, SparkConfig()))
        assert taken[t.name] and not taken[t.name] & LOOP_SETTINGS, (t.name, taken[t.name])
    # what does change the data, the start or the held-out sets is taken
    assert taken["tasks.data.prepare_data"] == {"data"}
    assert taken["tasks.model.bootstrap"] == {"model", "bootstrap"}
    assert taken["tasks.evaluate.judge_eval_set"] == {"model", "eval", "reward"}
