"""The segment loop (spark_core.segment) on the real tiny model, DeepSpeed trainer and
HF colocated rollouts: its per-epoch metric keys are the fine-grained workflow's, its
artifacts carry the declared schemas plus the epoch, and a segment killed after an
epoch resumes there on the next attempt and ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os

import pytest
import torch

from spark_core import schemas
from spark_core.checkpoint import Checkpoints
from spark_core.config import SparkConfig
from spark_core.data import generate
from spark_core.segment import ARTIFACTS, CRASH_AFTER_EPOCH_ENV, run_segment, with_epoch

pytestmark = pytest.mark.slow  # three 2-epoch segments of the tiny model: ~2-4 min on 2 cores

SMALL = {"rollout.prompts_per_epoch": 2, "rollout.n_samples": 2, "rollout.max_new_tokens": 8,
         "train.train_batch_size": 4, "train.micro_batch_size": 4, "eval.max_new_tokens": 8,
         "recycle.recycled_batch": 2, "loop.mode": "segment", "epochs": 2}


def _segment(cfg, tiny_dir, train, evals, judge, ck, key="k1"):
    from spark_core.rollout.colocated import make_colocated
    from spark_core.train.engine import GRPOTrainer

    return run_segment(cfg, make_trainer=lambda s: GRPOTrainer(cfg, tiny_dir, tiny_dir, state_in=s),
                       make_engine=lambda tr: make_colocated(cfg, tr, tiny_dir), train=train, eval_prompts=evals,
                       judge_prompts=judge, queue=[], first_epoch=0, n_epochs=2, state_in=None, key=key,
                       checkpoints=ck)


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in trainer.full_state_dict_iter()}


def test_segment_metrics_artifacts_and_resume(tiny_dir, tmp_path, monkeypatch):
    cfg = SparkConfig().with_overrides(SMALL)
    train, evals = generate(8, seed=1, id_prefix="train"), generate(2, seed=2, id_prefix="eval")
    judge = []

    full, tr_full = _segment(cfg, tiny_dir, train, evals, judge, Checkpoints(str(tmp_path / "a")))
    assert full.resumed_epochs == 0 and len(full.epoch_metrics) == 2
    for m in full.epoch_metrics:  # the keys the fine-grained epoch logs (tests/test_workflow_e2e.py)
        for key in ("policy/reward_mean", "policy/samples", "policy/loss", "policy/kl", "time/update_policy",
                    "time/reward_policy", "time/evaluate", "recycled/steps", "eval/accuracy"):
            assert key in m, key
        assert m["policy/samples"] == 4 and m["policy/steps"] == 1
    ran = [m for m in full.epoch_metrics if m["recycled/steps"]]
    assert ran and all(m["recycled/global_step"] == m["policy/global_step"] + 1 for m in ran)
    for name, schema in ARTIFACTS.items():  # every artifact conforms to its declared schema + epoch
        t = schemas.table(full.artifacts[name], with_epoch(schema))
        assert t.num_rows > 0, name
    assert {r["epoch"] for r in full.artifacts["rollouts"]} == {0, 1}
    assert {r["epoch"] for r in full.artifacts["eval"]} == {1, 2}
    # one resume slot, after epoch 1 of 2 (none after the last: the task saves the outputs)
    assert sorted(os.listdir(tmp_path / "a")) == ["slot-a"]
    assert json.load(open(tmp_path / "a" / "slot-a" / "spark_segment.json"))["done"] == 1

    # killed after epoch 1: the slot of epoch 1 was published, the next attempt resumes there
    published = tmp_path / "published"

    def publish(d):
        import shutil

        shutil.copytree(d, published, dirs_exist_ok=True)

    monkeypatch.setenv(CRASH_AFTER_EPOCH_ENV, "1")
    with pytest.raises(RuntimeError, match="simulated crash after epoch 1"):
        _segment(cfg, tiny_dir, train, evals, judge, Checkpoints(str(tmp_path / "pod1"), publish=publish))
    monkeypatch.delenv(CRASH_AFTER_EPOCH_ENV)
    assert (published / "spark_segment.json").exists() and (published / "state").is_dir()

    def restore(d):
        import shutil

        shutil.copytree(published, d, dirs_exist_ok=True)
        return True

    resumed, tr_res = _segment(cfg, tiny_dir, train, evals, judge,
                               Checkpoints(str(tmp_path / "pod2"), restore=restore))  # a fresh pod
    assert resumed.resumed_epochs == 1
    assert [sorted(m) for m in resumed.epoch_metrics] == [sorted(m) for m in full.epoch_metrics]
    # epoch 0 comes from the checkpoint, epoch 1 is recomputed from the restored state: same rollouts
    for name in ("rollouts", "scored", "recycled"):
        key = "rollout_id" if name != "recycled" else "prompt_id"
        assert [r[key] for r in resumed.artifacts[name]] == [r[key] for r in full.artifacts[name]], name
    assert [r["response_token_ids"] for r in resumed.artifacts["rollouts"]] == \
        [r["response_token_ids"] for r in full.artifacts["rollouts"]]
    assert resumed.epoch_metrics[1]["policy/global_step"] == full.epoch_metrics[1]["policy/global_step"]
    w_full, w_res = _weights(tr_full), _weights(tr_res)
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        assert torch.allclose(w_full[k], w_res[k], atol=1e-6), k

    # a checkpoint of other inputs is never resumed
    other, _ = _segment(cfg, tiny_dir, train, evals, judge, Checkpoints(str(tmp_path / "pod3"), restore=restore),
                        key="k2")
    assert other.resumed_epochs == 0
