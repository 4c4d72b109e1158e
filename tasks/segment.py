"""The segment task: K SPARK epochs on one node, rollout and training colocated.

An Elastic (torchrun) task like tasks/update.py; every rank runs spark_core.segment.
It still hands back every stage's artifacts as outputs of its node: rollouts, scored
rollouts, recycled prompts, evaluation results and training steps as Parquet with the
declared schemas plus an `epoch` column, the policy checkpoint, the optimizer state,
the FIFO of waiting recycled prompts and the per-epoch metrics.

State between nodes: with a state volume (cluster.state_volume_claim, mounted through
the pod template at $SPARK_STATE_DIR) the optimizer/ZeRO state and the resume slots
stay on the volume and the state output is a reference to that path (nothing
uploaded); without one they go through object storage and Flyte's intra-task
checkpoint. Either way a retry of the task resumes after the last finished epoch.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import NamedTuple, Optional

from flytekit import task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset

from images import segment_image
from tasks.cache_versions import stage_cache
from tasks.checkpoints import segment_checkpoints, segment_key, state_root
from spark_core.config import SparkConfig
from tasks.common import Checkpoint, provenance, rows_of, to_sd
from tasks.resources import (CLUSTER, PRESET, SEGMENT, SEGMENT_ACCELERATOR, STATE_ENV,
                             STATE_POD_TEMPLATE)
from tasks.update import elastic_config


class SegmentOutput(NamedTuple):
    policy: Checkpoint
    state: FlyteDirectory
    queue: StructuredDataset  # recycled prompts still waiting (PROMPTS)
    rollouts: StructuredDataset  # ROLLOUTS + epoch
    scored: StructuredDataset  # SCORED_ROLLOUTS + epoch
    recycled: StructuredDataset  # PROMPTS + epoch
    eval_results: StructuredDataset  # EVAL_RESULTS + epoch
    steps: StructuredDataset  # TRAIN_STEPS + epoch
    metrics: str  # JSON list: one merged metrics dict per epoch


@task(task_config=elastic_config(CLUSTER.segment.nnodes, CLUSTER.segment.nproc_per_node),
      cache=stage_cache("segment"), container_image=segment_image,
      resources=SEGMENT, accelerator=SEGMENT_ACCELERATOR, shared_memory=True, retries=2,
      pod_template=STATE_POD_TEMPLATE,
      environment={"SPARK_PRESET": PRESET, "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_TIMEOUT": "1800",
                   "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **STATE_ENV})
def run_segment(config: SparkConfig, policy: Checkpoint, ref: Checkpoint, state: Optional[FlyteDirectory],
                queue: Optional[StructuredDataset], train: StructuredDataset, eval_prompts: StructuredDataset,
                judge_prompts: StructuredDataset, first_epoch: int, n_epochs: int) -> SegmentOutput:
    import torch

    from spark_core import schemas
    from spark_core import segment as seg
    from spark_core.rollout.colocated import make_colocated
    from spark_core.train.callbacks import faults_from_env
    from spark_core.train.engine import GRPOTrainer

    cfg = config
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("WORLD_SIZE", "1")))))
    policy_dir, ref_dir = policy.download(), ref.download()
    queue_rows = rows_of(queue, schemas.PROMPTS) if queue is not None else []
    key = segment_key(cfg.to_json(), first_epoch, n_epochs, policy, state, ref, queue_rows)
    ck = segment_checkpoints(key)
    result, trainer = seg.run_segment(
        cfg, make_trainer=lambda state_in: GRPOTrainer(cfg, policy_dir, ref_dir, state_in=state_in,
                                                       callbacks=faults_from_env()),
        make_engine=lambda tr: make_colocated(cfg, tr, policy_dir),
        train=rows_of(train, schemas.PROMPTS), eval_prompts=rows_of(eval_prompts, schemas.PROMPTS),
        judge_prompts=rows_of(judge_prompts, schemas.PROMPTS), queue=queue_rows, first_epoch=first_epoch,
        n_epochs=n_epochs, state_in=state.download() if state is not None else None, key=key, checkpoints=ck,
        desc=f"segment[e{first_epoch}-{first_epoch + n_epochs - 1}]")

    from flytekit import current_context

    out_dir = os.path.join(current_context().working_directory, "policy")
    root = state_root()
    state_dir = os.path.join(root, "state", key) if root else os.path.join(tempfile.gettempdir(), "spark-state", key)
    trainer.save_hf(out_dir)
    trainer.save_state(state_dir)
    seg.clear_checkpoints(ck)
    meta = provenance(cfg, "segment", ("model", "rollout", "reward", "recycle", "train", "eval", "loop"),
                      first_epoch=str(first_epoch), n_epochs=str(n_epochs), resumed=str(result.resumed_epochs))
    sd = {n: to_sd(result.artifacts[n], seg.with_epoch(s), meta) for n, s in seg.ARTIFACTS.items()}
    return SegmentOutput(
        policy=FlyteDirectory(out_dir),
        # on the volume the next segment reads the state where it is: no upload
        state=FlyteDirectory(state_dir, remote_directory=False) if root else FlyteDirectory(state_dir),
        queue=to_sd(result.queue, schemas.PROMPTS, meta), rollouts=sd["rollouts"], scored=sd["scored"],
        recycled=sd["recycled"], eval_results=sd["eval"], steps=sd["steps"],
        metrics=json.dumps(result.epoch_metrics))
