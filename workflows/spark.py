"""SPARK co-evolution as a Flyte workflow: wiring only.

Per epoch (spark_core/epoch.py, nodes from workflows/epoch_nodes.py): rollout (sharded)
-> verifiable reward -> recycle -> update on the problems -> recycled prompts queue up
(FIFO) and, once a full batch waits, are rolled out with the updated policy -> reward
-> update on them -> eval. Every node is cached, so a rerun or a Flyte "recover"
resumes where the last one stopped. The epochs run in blocks, one `spark_block` launch-plan
execution each; in mode "segment" a block's epochs run K at a time in one colocated
GPU node (tasks/segment.py) instead of a node per stage.

    pyflyte run workflows/spark.py spark                       # tiny default, CPU
    SPARK_PRESET=7b-8xh100 pyflyte run --remote workflows/spark.py spark \\
        --model s3://bucket/Qwen2.5-VL-7B-Instruct --data s3://bucket/virl39k.parquet
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from flytekit import LaunchPlan, dynamic, task, workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset

from images import light_image
from spark_core.config import BootstrapConfig, DataConfig, EvalConfig, ModelConfig, RewardConfig, SparkConfig
from tasks.common import Checkpoint
from tasks.data import prepare_data
from tasks.evaluate import evaluate_policy, judge_eval_set
from tasks.model import base_model, bootstrap
from tasks.report import RunSummary, report, summarize_run
from tasks.resources import LIGHT, PRESET
from tasks.segment import run_segment
from tasks.tracking import finish_tracking, join_logs, log_epoch, log_segment, start_tracking
from workflows.epoch_nodes import FlyteStages


class SparkOutput(NamedTuple):
    policy: Checkpoint
    metrics: StructuredDataset  # one row per epoch (0 = the starting model), one column per metric
    quarantine: StructuredDataset
    summary: RunSummary  # last, so a local `pyflyte run` ends with its readable text


class Configs(NamedTuple):
    """The config, and the sections that the stages before the loop take (as outputs of
    their own: a promise's attribute `eval` would be Promise.eval)."""

    config: SparkConfig
    data: DataConfig
    model: ModelConfig
    bootstrap: BootstrapConfig
    eval: EvalConfig
    reward: RewardConfig


@task(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def make_config(preset: str, epochs: int, arm: str, model: str, data: str, eval_data: str,
                overrides: str, mode: str = "") -> Configs:
    """Preset + workflow inputs + JSON overrides -> the config; each task takes its sections."""
    from spark_core.config import check_registered_preset, load_config

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
    if not cfg.model.path:
        raise ValueError(f"preset {preset} needs a model: pass --model <HF directory or bucket URI>")
    return Configs(cfg, cfg.data, cfg.model, cfg.bootstrap, cfg.eval, cfg.reward)


class BlockOutput(NamedTuple):
    policy: Checkpoint
    state: Optional[FlyteDirectory]
    queue: Optional[StructuredDataset]
    logs: list[str]  # each epoch's merged metrics (JSON), as logged to MLflow


@dynamic(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def coevolve_block(config: SparkConfig, run_id: str, start: Checkpoint, policy: Checkpoint,
                   state: Optional[FlyteDirectory], queue: Optional[StructuredDataset], train: StructuredDataset,
                   eval_prompts: StructuredDataset, judge_prompts: StructuredDataset, first_epoch: int,
                   n_epochs: int) -> BlockOutput:
    """Epochs first_epoch .. first_epoch + n_epochs - 1: spark_core.epoch over a node per
    stage (loop.mode "dag"), or segments of loop.segment_steps epochs (mode "segment")."""
    from spark_core.epoch import Carry, run_epochs
    from spark_core.loop_plan import segments

    if config.loop.mode == "segment":
        parts = []
        for s_first, k in segments(first_epoch, n_epochs, config.loop.segment_steps):
            sg = run_segment(config=config, policy=policy, ref=start, state=state, queue=queue,
                             train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts,
                             first_epoch=s_first, n_epochs=k).with_overrides(name=f"segment-e{s_first + 1}-{s_first + k}")
            policy, state, queue = sg.policy, sg.state, sg.queue
            parts.append(log_segment(run_id=run_id, first_epoch=s_first, metrics=sg.metrics))
        return BlockOutput(policy, state, queue, join_logs(parts=parts))

    nodes = FlyteStages(config, run_id=run_id, start=start, train=train, eval_prompts=eval_prompts,
                        judge_prompts=judge_prompts)
    carry, logs = run_epochs(config, nodes, first_epoch, n_epochs, Carry(policy, state, queue))
    return BlockOutput(carry.policy, carry.state, carry.queue, logs)


@workflow
def spark_block(config: SparkConfig, run_id: str, start: Checkpoint, policy: Checkpoint,
                state: Optional[FlyteDirectory], queue: Optional[StructuredDataset], train: StructuredDataset,
                eval_prompts: StructuredDataset, judge_prompts: StructuredDataset, first_epoch: int,
                n_epochs: int) -> BlockOutput:
    return coevolve_block(config=config, run_id=run_id, start=start, policy=policy, state=state,
                          queue=queue, train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts,
                          first_epoch=first_epoch, n_epochs=n_epochs)


# Each block of epochs runs as its own execution of this launch plan: its own workflow
# object in etcd, so the run's length is not bounded by one dynamic's size.
spark_block_lp = LaunchPlan.get_or_create(spark_block, name="spark_block")


@dynamic(container_image=light_image, resources=LIGHT, environment={"SPARK_PRESET": PRESET})
def coevolve(config: SparkConfig, run_id: str, start: Checkpoint, train: StructuredDataset,
             eval_prompts: StructuredDataset, judge_prompts: StructuredDataset,
             start_metrics: str) -> tuple[Checkpoint, StructuredDataset]:
    """Epoch-0 evaluation, then the blocks of epochs (spark_core.loop_plan), then tracking."""
    from spark_core.loop_plan import blocks

    policy, state, queue = start, None, None
    # the starting model's evaluation takes no loop setting, so arms and seeds share it from the cache
    _, m0 = evaluate_policy(model=config.model, eval=config.eval, reward=config.reward, policy=start,
                            eval_prompts=eval_prompts, judge_prompts=judge_prompts, epoch=0).with_overrides(name="eval-e0")
    parts = [[log_epoch(run_id=run_id, epoch=0, metrics=[m0, start_metrics])]]
    for first, n in blocks(config):
        b = spark_block_lp(config=config, run_id=run_id, start=start, policy=policy, state=state,
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
    (tiny-cpu 3, tiny-cpu-learn 12). arm: spark | policy | reward | policy_reward
    (ablations). model/data/eval_data: local paths or bucket URIs ("" = embedded tiny model
    and synthetic data). overrides: JSON of dotted config keys, e.g. '{"train.lr": 1e-6}'.
    mode: dag (a node per stage) | segment (K colocated epochs per node); "" = the preset's.
    """
    cfg = make_config(preset=preset, epochs=epochs, arm=arm, model=model, data=data, eval_data=eval_data,
                      overrides=overrides, mode=mode)
    run_id = start_tracking(config=cfg.config)
    # the stages before the loop take no loop setting (arm, seed, rollout.*, train.*,
    # epochs), so runs that differ only in those share them from the cache
    d = prepare_data(data=cfg.data)
    base = base_model(model=cfg.model)
    start, boot_metrics = bootstrap(model=cfg.model, bootstrap=cfg.bootstrap, base=base, train=d.train)
    judge_prompts = judge_eval_set(model=cfg.model, eval=cfg.eval, reward=cfg.reward, policy=start, eval_prompts=d.eval)
    policy, history = coevolve(config=cfg.config, run_id=run_id, start=start, train=d.train, eval_prompts=d.eval,
                               judge_prompts=judge_prompts, start_metrics=boot_metrics)
    report(history=history)  # Flyte Deck: curves over epochs and per-benchmark table
    summary = summarize_run(config=cfg.config, run_id=run_id, history=history, policy=policy)
    return SparkOutput(policy=policy, metrics=history, quarantine=d.quarantine, summary=summary)
