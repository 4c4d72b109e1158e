"""SPARK co-evolution as a Flyte workflow: wiring only.

Per epoch: rollout (sharded) -> verifiable reward -> recycle -> update on the problems
-> recycled prompts queue up (FIFO) and, once a full batch waits, are rolled out with
the updated policy -> reward -> update on them -> eval. Every node is cached, so a rerun or a Flyte "recover" resumes where
the last one stopped. The epochs run in blocks, one `spark_block` launch-plan
execution each; in mode "segment" a block's epochs run K at a time in one colocated
GPU node (tasks/segment.py) instead of a node per stage.

    pyflyte run workflows/spark.py spark                       # tiny default, CPU
    SPARK_PRESET=7b-8xh100 pyflyte run --remote workflows/spark.py spark \\
        --model s3://bucket/Qwen2.5-VL-7B-Instruct --data s3://bucket/virl39k.parquet
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

from flytekit import LaunchPlan, dynamic, map_task, task, workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.common import Checkpoint
from tasks.data import prepare_data, select_prompts
from tasks.evaluate import evaluate_policy, judge_eval_set
from tasks.model import base_model, bootstrap
from tasks.recycle import queue_recycled, recycle_rollouts
from tasks.report import RunSummary, report, summarize_run
from tasks.resources import LIGHT, PRESET
from tasks.reward import score_rollouts
from tasks.rollout import rollout_shard
from tasks.segment import run_segment
from tasks.tracking import finish_tracking, join_logs, log_epoch, log_segment, start_tracking
from tasks.update import update_policy


class Configs(NamedTuple):
    config: str  # what the epoch loop uses
    prefix: str  # what the stages before the loop use (shared across arms and loop settings)


class SparkOutput(NamedTuple):
    policy: Checkpoint
    metrics: str  # JSON list: the merged metrics of each epoch (0 = the starting model)
    quarantine: StructuredDataset
    summary: RunSummary  # last, so a local `pyflyte run` ends with its readable text


@task(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def make_config(preset: str, epochs: int, arm: str, model: str, data: str, eval_data: str,
                overrides: str, mode: str = "") -> Configs:
    """Preset + workflow inputs + JSON overrides -> the full config every task receives."""
    from spark_core.config import check_registered_preset, load_config, prefix_view

    # pods were sized from SPARK_PRESET when the tasks were registered: refuse a preset
    # input that would need other pods
    check_registered_preset(preset, PRESET)
    fields = {"recycle.arm": arm}
    if epochs > 0:
        fields["epochs"] = epochs
    if mode:
        fields["loop.mode"] = mode
    fields.update({k: v for k, v in {"model.path": model, "data.train_path": data,
                                     "data.eval_path": eval_data}.items() if v})
    # one check of the config as it will run, inputs included (e.g. --mode segment on a
    # preset whose engine and trainer cannot share a GPU is refused here)
    cfg = load_config(preset, overrides, fields)
    return Configs(cfg.to_json(), prefix_view(cfg).to_json())


def _rollout(config_json: str, policy, prompts, tag: str, seed: int, n_shards: int):
    return map_task(
        partial(rollout_shard, config_json=config_json, policy=policy, prompts=prompts, tag=tag, seed=seed,
                n_shards=n_shards),
        min_success_ratio=1.0,
    )(shard=list(range(n_shards)))


class BlockOutput(NamedTuple):
    policy: Checkpoint
    state: Optional[FlyteDirectory]
    queue: Optional[StructuredDataset]
    logs: list[str]  # each epoch's merged metrics (JSON), as logged to MLflow


@dynamic(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def coevolve_block(config_json: str, run_id: str, start: Checkpoint, policy: Checkpoint,
                   state: Optional[FlyteDirectory], queue: Optional[StructuredDataset], train: StructuredDataset,
                   eval_prompts: StructuredDataset, judge_prompts: StructuredDataset, first_epoch: int,
                   n_epochs: int) -> BlockOutput:
    """Epochs first_epoch .. first_epoch + n_epochs - 1, as fine-grained stage nodes
    (loop.mode "dag") or as segments of loop.segment_steps epochs (mode "segment")."""
    from spark_core.config import SparkConfig, eval_due, trained_passes
    from spark_core.loop_plan import segments

    cfg = SparkConfig.from_json(config_json)
    if cfg.loop.mode == "segment":
        parts = []
        for s_first, k in segments(first_epoch, n_epochs, cfg.loop.segment_steps):
            sg = run_segment(config_json=config_json, policy=policy, ref=start, state=state, queue=queue,
                             train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts,
                             first_epoch=s_first, n_epochs=k).with_overrides(name=f"segment-e{s_first + 1}-{s_first + k}")
            policy, state, queue = sg.policy, sg.state, sg.queue
            parts.append(log_segment(run_id=run_id, first_epoch=s_first, metrics=sg.metrics))
        return BlockOutput(policy, state, queue, join_logs(parts=parts))

    passes = trained_passes(cfg.recycle.arm)
    n_shards = max(1, cfg.rollout.n_shards)
    logs = []
    for e in range(first_epoch, first_epoch + n_epochs):
        prompts = select_prompts(config_json=config_json, train=train, epoch=e)
        shards = _rollout(config_json, policy, prompts, f"e{e}-policy", cfg.seed + 2 * e, n_shards)
        scored, rm = score_rollouts(config_json=config_json, shards=shards, tag="policy").with_overrides(
            name=f"reward-e{e}")
        recycled = recycle_rollouts(config_json=config_json, prompts=prompts, scored=scored, epoch=e).with_overrides(
            name=f"recycle-e{e}")
        metrics = [rm]
        if "policy" in passes:
            up = update_policy(config_json=config_json, policy=policy, ref=start, prompts=prompts, scored=scored,
                               state=state, phase="policy").with_overrides(name=f"update-policy-e{e}")
            policy, state = up.policy, up.state
            metrics.append(up.metrics)
        if cfg.recycle.arm != "policy":
            q = queue_recycled(config_json=config_json, queue=queue, new=recycled, epoch=e).with_overrides(
                name=f"queue-e{e}")
            recycled, queue = q.batch, q.queue
            rshards = _rollout(config_json, policy, recycled, f"e{e}-recycled", cfg.seed + 2 * e + 1, n_shards)
            rscored, rrm = score_rollouts(config_json=config_json, shards=rshards, tag="recycled").with_overrides(
                name=f"reward-recycled-e{e}")
            metrics.append(rrm)
            if "recycled" in passes:
                up = update_policy(config_json=config_json, policy=policy, ref=start, prompts=recycled,
                                   scored=rscored, state=state, phase="recycled").with_overrides(
                    name=f"update-recycled-e{e}")
                policy, state = up.policy, up.state
                metrics.append(up.metrics)
        if eval_due(cfg, e + 1):  # after e + 1 epochs
            _, em = evaluate_policy(config_json=config_json, policy=policy, eval_prompts=eval_prompts,
                                    judge_prompts=judge_prompts, epoch=e + 1).with_overrides(name=f"eval-e{e + 1}")
            metrics.append(em)
        logs.append(log_epoch(run_id=run_id, epoch=e + 1, metrics=metrics))
    return BlockOutput(policy, state, queue, logs)


@workflow
def spark_block(config_json: str, run_id: str, start: Checkpoint, policy: Checkpoint,
                state: Optional[FlyteDirectory], queue: Optional[StructuredDataset], train: StructuredDataset,
                eval_prompts: StructuredDataset, judge_prompts: StructuredDataset, first_epoch: int,
                n_epochs: int) -> BlockOutput:
    return coevolve_block(config_json=config_json, run_id=run_id, start=start, policy=policy, state=state,
                          queue=queue, train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts,
                          first_epoch=first_epoch, n_epochs=n_epochs)


# Each block of epochs runs as its own execution of this launch plan: its own workflow
# object in etcd, so the run's length is not bounded by one dynamic's size.
spark_block_lp = LaunchPlan.get_or_create(spark_block, name="spark_block")


@dynamic(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def coevolve(config_json: str, run_id: str, start: Checkpoint, train: StructuredDataset,
             eval_prompts: StructuredDataset, judge_prompts: StructuredDataset, start_metrics: str) -> tuple[Checkpoint, str]:
    """Epoch-0 evaluation, then the blocks of epochs (spark_core.loop_plan), then tracking."""
    from spark_core.config import SparkConfig, prefix_view
    from spark_core.loop_plan import blocks

    cfg = SparkConfig.from_json(config_json)
    policy, state, queue = start, None, None
    # the starting model is evaluated under the prefix config, so arms and seeds share it from the cache
    _, m0 = evaluate_policy(config_json=prefix_view(cfg).to_json(), policy=start, eval_prompts=eval_prompts,
                            judge_prompts=judge_prompts, epoch=0).with_overrides(name="eval-e0")
    parts = [[log_epoch(run_id=run_id, epoch=0, metrics=[m0, start_metrics])]]
    for first, n in blocks(cfg):
        b = spark_block_lp(config_json=config_json, run_id=run_id, start=start, policy=policy, state=state,
                           queue=queue, train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts,
                           first_epoch=first, n_epochs=n)
        policy, state, queue = b.policy, b.state, b.queue
        parts.append(b.logs)
    history = finish_tracking(run_id=run_id, epoch_metrics=join_logs(parts=parts))
    return policy, history


@workflow
def spark(preset: str = PRESET, epochs: int = 0, arm: str = "spark", model: str = "", data: str = "",
          eval_data: str = "", overrides: str = "", mode: str = "") -> SparkOutput:
    """Run `epochs` SPARK co-evolution epochs.

    preset: tiny-cpu | tiny-cpu-learn | 7b-8xh100 | 32b-16xh100. epochs: 0 = the preset's
    (tiny-cpu 2, tiny-cpu-learn more). arm: spark | policy | reward | policy_reward
    (ablations). model/data/eval_data: local paths or bucket URIs ("" = embedded tiny model
    and synthetic data). overrides: JSON of dotted config keys, e.g. '{"train.lr": 1e-6}'.
    mode: dag (a node per stage) | segment (K colocated epochs per node); "" = the preset's.
    """
    cfgs = make_config(preset=preset, epochs=epochs, arm=arm, model=model, data=data, eval_data=eval_data,
                       overrides=overrides, mode=mode)
    config_json = cfgs.config
    run_id = start_tracking(config_json=config_json)
    d = prepare_data(config_json=cfgs.prefix)
    base = base_model(config_json=cfgs.prefix)
    start, boot_metrics = bootstrap(config_json=cfgs.prefix, base=base, train=d.train)
    judge_prompts = judge_eval_set(config_json=cfgs.prefix, policy=start, eval_prompts=d.eval)
    policy, history = coevolve(config_json=config_json, run_id=run_id, start=start, train=d.train,
                               eval_prompts=d.eval, judge_prompts=judge_prompts, start_metrics=boot_metrics)
    report(history=history)  # Flyte Deck: curves over epochs and per-benchmark table
    summary = summarize_run(config_json=config_json, run_id=run_id, history=history, policy=policy)
    return SparkOutput(policy=policy, metrics=history, quarantine=d.quarantine, summary=summary)


