"""The GRPO update: DeepSpeed on every rank of an Elastic (torchrun) job, or in the
task's own process when the job has one rank.

A retried update resumes: every SPARK_CHECKPOINT_EVERY optimizer steps (default 1) the
engine state is published through Flyte's intra-task checkpoint, and the next attempt
(or a worker restarted by the Elastic agent in the same pod) continues from the newest
one instead of starting the pass over.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

from flytekit import task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset
from flytekitplugins.kfpytorch import Elastic

from images import trainer_image
from tasks.cache_versions import stage_cache
from tasks.checkpoints import node_dir, step_checkpoints
from spark_core.config import ClusterConfig, ModelConfig, RecycleConfig, RolloutConfig, StageConfig, TrainConfig
from tasks.common import Checkpoint, rows_of, to_sd
from tasks.resources import CLUSTER, PRESET, UPDATE, UPDATE_ACCELERATOR

CRASH_PHASE_ENV = "SPARK_FAULT_CRASH_UPDATE_PHASE"  # test hook: fail the update of this phase before training
# A resume checkpoint of a 7B run is the whole ZeRO state (~100 GB): publish it twice a
# pass there, every step on the tiny default.
CHECKPOINT_EVERY = "1" if PRESET == "tiny-cpu" else "4"


class UpdateOutput(NamedTuple):
    policy: Checkpoint
    state: FlyteDirectory
    metrics: str
    steps: StructuredDataset


def elastic_config(nnodes: int = 1, nproc_per_node: int = 1) -> Optional[Elastic]:
    """torchrun (Elastic) for a job of several ranks. A job of one rank gets None, a plain
    task: it runs in the task's own process, with no Elastic agent, no spawned worker and
    no second import of torch and DeepSpeed (docs/tiny-default.md measures the saving). A
    failed one-rank attempt is retried by Flyte and resumes from its checkpoint."""
    if nnodes * nproc_per_node <= 1:
        return None
    return Elastic(nnodes=nnodes, nproc_per_node=nproc_per_node, start_method="spawn", max_restarts=1,
                   increase_shared_mem=False,
                   rdzv_configs={"timeout": 1200, "join_timeout": 1200, "read_timeout": 600})


# SPARK_PRESET goes into the pod: the Elastic config (processes per node) is rebuilt
# there when this module is imported.
@task(task_config=elastic_config(CLUSTER.update.nnodes, CLUSTER.update.nproc_per_node),
      cache=stage_cache("update"), container_image=trainer_image,
      resources=UPDATE, accelerator=UPDATE_ACCELERATOR, shared_memory=True, retries=2,
      environment={"SPARK_PRESET": PRESET, "SPARK_CHECKPOINT_EVERY": CHECKPOINT_EVERY,
                   "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_TIMEOUT": "1800", "OMP_NUM_THREADS": "1"})
def update_policy(model: ModelConfig, train: TrainConfig, rollout: RolloutConfig, recycle: RecycleConfig,
                  cluster: ClusterConfig, epochs: int, policy: Checkpoint, ref: Checkpoint, prompts: StructuredDataset,
                  scored: StructuredDataset, state: Optional[FlyteDirectory], phase: str) -> UpdateOutput:
    import torch
    from flytekit import current_context

    from spark_core import schemas
    from spark_core.train.engine import run_update
    from spark_core.train.metrics import pass_metrics

    if os.environ.get(CRASH_PHASE_ENV) == phase:
        raise RuntimeError(f"{CRASH_PHASE_ENV}={phase}: simulated failure of the {phase} update")
    # rollout, recycle, cluster and epochs size the learning-rate schedule (total_optimizer_steps)
    cfg = StageConfig("update", model=model, train=train, rollout=rollout, recycle=recycle, cluster=cluster,
                      epochs=epochs)
    rows = rows_of(scored, schemas.SCORED_ROLLOUTS)
    base = current_context().working_directory
    out_dir = os.path.join(base, "policy")
    inputs = (str(policy.path), str(state.path) if state is not None else "")
    state_dir = node_dir("spark-train-state", phase, *inputs)
    os.makedirs(state_dir, exist_ok=True)
    if not rows:  # nothing recycled this epoch: the policy carries over unchanged
        return UpdateOutput(policy, state or FlyteDirectory(state_dir), json.dumps({f"{phase}/steps": 0}),
                            to_sd([], schemas.TRAIN_STEPS))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("WORLD_SIZE", "1")))))
    m = run_update(cfg=cfg, model_dir=policy.download(), ref_dir=ref.download(),
                   prompts=rows_of(prompts, schemas.PROMPTS), scored=rows, out_dir=out_dir,
                   state_in=state.download() if state is not None else None, state_out=state_dir, phase=phase,
                   checkpoints=step_checkpoints(phase, *inputs))
    metrics, steps = pass_metrics(phase, m)
    return UpdateOutput(FlyteDirectory(out_dir), FlyteDirectory(state_dir), json.dumps(metrics),
                        to_sd(steps, schemas.TRAIN_STEPS))
