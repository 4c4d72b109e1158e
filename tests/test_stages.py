"""Each Flyte task on its own (real local execution): artifacts follow their declared schemas."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from spark_core import schemas
from spark_core.config import load_config
from tests.helpers import config_inputs

FAST = {"bootstrap.enabled": False, "data.synthetic_train": 8, "data.synthetic_eval": 4,
        "rollout.prompts_per_epoch": 4, "rollout.n_samples": 4, "rollout.max_new_tokens": 12,
        "train.train_batch_size": 16, "eval.max_new_tokens": 12, "eval.judge_samples": 4}


def _table(sd, schema):
    t = sd.open(pa.Table).all()
    assert t.schema.names == schema.names
    for f in schema:
        assert t.schema.field(f.name).type == f.type, f.name
    return t


@pytest.mark.slow
def test_each_stage_writes_its_schema():
    from tasks.data import prepare_data, select_prompts
    from tasks.model import base_model
    from tasks.recycle import recycle_rollouts
    from tasks.reward import score_rollouts
    from tasks.rollout import rollout_shard
    from tasks.update import update_policy

    cfg = load_config("tiny-cpu", json.dumps(FAST))
    d = prepare_data(**config_inputs(prepare_data, cfg))
    train = _table(d.train, schemas.PROMPTS)
    assert train.num_rows == 8
    meta = schemas.provenance(train)
    assert meta["spark.stage"] == "data" and len(meta["spark.config_hash"]) == 16

    prompts = select_prompts(**config_inputs(select_prompts, cfg), train=d.train, epoch=0)
    assert _table(prompts, schemas.PROMPTS).num_rows == 4
    base = base_model(**config_inputs(base_model, cfg))
    shards = [rollout_shard(**config_inputs(rollout_shard, cfg), policy=base, prompts=prompts, tag="t", sample_seed=1, n_shards=2, shard=s)
              for s in range(2)]
    rolls = [_table(s, schemas.ROLLOUTS) for s in shards]
    assert sum(r.num_rows for r in rolls) == 16
    r0 = rolls[0].to_pylist()[0]
    assert len(r0["response_token_ids"]) == len(r0["old_logprobs"]) > 0

    scored, metrics = score_rollouts(**config_inputs(score_rollouts, cfg), shards=shards, tag="policy")
    st = _table(scored, schemas.SCORED_ROLLOUTS)
    assert set(st.column("verify_status").to_pylist()) <= {"ok", "wrong", "no_boxed", "timeout", "error"}
    assert "policy/reward_mean" in json.loads(metrics)

    rec = recycle_rollouts(**config_inputs(recycle_rollouts, cfg), prompts=prompts, scored=scored, epoch=0)
    rt = _table(rec, schemas.PROMPTS)
    for row in rt.to_pylist():
        assert row["kind"] in ("pointwise", "pairwise", "reflection")
        assert row["source_prompt_id"] and row["source_rollout_id"] and row["template_id"]

    up = update_policy(**config_inputs(update_policy, cfg), policy=base, ref=base, prompts=prompts, scored=scored, state=None,
                       phase="policy")
    steps = _table(up.steps, schemas.TRAIN_STEPS)
    assert steps.num_rows == 1 and json.loads(up.metrics)["policy/global_step"] == 1
