"""Same seed and config on CPU: the same data, rollouts, rewards and recycled prompts."""

from __future__ import annotations

import json

import pyarrow as pa
from flytekit.types.directory import FlyteDirectory

from spark_core.config import load_config
from tests.helpers import config_inputs

FAST = {"bootstrap.enabled": False, "data.synthetic_train": 6, "data.synthetic_eval": 2,
        "rollout.prompts_per_epoch": 4, "rollout.n_samples": 3, "rollout.max_new_tokens": 8}
TIMING_COLUMNS = {"verify_ms"}
TIMING_METADATA = {"spark.seconds"}


def _stages(cfg, policy) -> tuple[dict[str, pa.Table], dict]:
    """prepare_data -> select_prompts -> rollout_shard x2 -> score_rollouts -> recycle_rollouts."""
    from tasks.data import prepare_data, select_prompts
    from tasks.recycle import recycle_rollouts
    from tasks.reward import score_rollouts
    from tasks.rollout import rollout_shard

    d = prepare_data(**config_inputs(prepare_data, cfg))
    prompts = select_prompts(**config_inputs(select_prompts, cfg), train=d.train, epoch=0)
    shards = [rollout_shard(**config_inputs(rollout_shard, cfg), policy=policy, prompts=prompts, tag="e0-policy", sample_seed=7, n_shards=2,
                            shard=s) for s in range(2)]
    scored, metrics = score_rollouts(**config_inputs(score_rollouts, cfg), shards=shards, tag="policy")
    recycled = recycle_rollouts(**config_inputs(recycle_rollouts, cfg), prompts=prompts, scored=scored, epoch=0)
    tables = {"train": d.train, "eval": d.eval, "prompts": prompts, "shard0": shards[0], "shard1": shards[1],
              "scored": scored, "recycled": recycled}
    return {k: sd.open(pa.Table).all() for k, sd in tables.items()}, json.loads(metrics)


def _comparable(t: pa.Table) -> tuple[list[dict], dict]:
    t = t.drop_columns([c for c in t.column_names if c in TIMING_COLUMNS])
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    return t.to_pylist(), {k: v for k, v in meta.items() if k not in TIMING_METADATA and not k.startswith("pandas")}


def test_same_seed_same_artifacts_and_metrics(tiny_dir, monkeypatch):
    monkeypatch.setenv("FLYTE_LOCAL_CACHE_ENABLED", "false")  # both runs really execute
    cfg = load_config("tiny-cpu", json.dumps(FAST))
    policy = FlyteDirectory(tiny_dir)
    first, m1 = _stages(cfg, policy)
    second, m2 = _stages(cfg, policy)

    assert first["scored"].num_rows == 4 * 3 and first["recycled"].num_rows > 0
    for name in first:
        rows1, meta1 = _comparable(first[name])
        rows2, meta2 = _comparable(second[name])
        assert rows1 == rows2, f"{name} differs between two runs with the same seed"
        assert meta1 == meta2, name
    no_time = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert no_time(m1) == no_time(m2) and "policy/reward_mean" in m1
