"""The GRPO update: DeepSpeed on every rank of an Elastic (torchrun) job."""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

from flytekit import Cache, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset
from flytekitplugins.kfpytorch import Elastic

from images import trainer_image
from tasks.cache_versions import CACHE_VERSIONS
from tasks.common import Checkpoint, cfg_of, rows_of, to_sd
from tasks.resources import CLUSTER, UPDATE, UPDATE_ACCELERATOR

class UpdateOutput(NamedTuple):
    policy: Checkpoint
    state: FlyteDirectory
    metrics: str
    steps: StructuredDataset

def elastic_config(nnodes: int = 1, nproc_per_node: int = 1) -> Elastic:
    return Elastic(nnodes=nnodes, nproc_per_node=nproc_per_node, start_method="spawn", max_restarts=1,
                   increase_shared_mem=False,
                   rdzv_configs={"timeout": 1200, "join_timeout": 1200, "read_timeout": 600})

@task(task_config=elastic_config(CLUSTER.update.nnodes, CLUSTER.update.nproc_per_node), cache=Cache(version=CACHE_VERSIONS["update"]), container_image=trainer_image,
      resources=UPDATE, accelerator=UPDATE_ACCELERATOR, shared_memory=True, retries=2,
      environment={"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_TIMEOUT": "1800", "OMP_NUM_THREADS": "1"})
def update_policy(config_json: str, policy: Checkpoint, ref: Checkpoint, prompts: StructuredDataset,
                  scored: StructuredDataset, state: Optional[FlyteDirectory], phase: str) -> UpdateOutput:

    import torch
    from flytekit import current_context

    from spark_core import schemas
    from spark_core.train.engine import run_update

    cfg = cfg_of(config_json)
    rows = rows_of(scored, schemas.SCORED_ROLLOUTS)
    base = current_context().working_directory
    out_dir = os.path.join(base, "policy")
    state_dir = os.path.join(base, "train_state")
    os.makedirs(state_dir, exist_ok=True)
    if not rows:  # nothing recycled this epoch: the policy carries over unchanged
        return UpdateOutput(policy, state or FlyteDirectory(state_dir), json.dumps({f"{phase}/steps": 0}),
                            to_sd([], schemas.TRAIN_STEPS))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("WORLD_SIZE", "1")))))
    m = run_update(cfg=cfg, model_dir=policy.download(), ref_dir=ref.download(),
                   prompts=rows_of(prompts, schemas.PROMPTS), scored=rows, out_dir=out_dir,
                   state_in=state.download() if state is not None else None, state_out=state_dir, phase=phase)
    steps = m.pop("step_log")
    metrics = {f"{phase}/{k}": v for k, v in m.items() if isinstance(v, (int, float))}
    metrics[f"time/update_{phase}"] = m["seconds"]
    return UpdateOutput(FlyteDirectory(out_dir), FlyteDirectory(state_dir), json.dumps(metrics),
                        to_sd(steps, schemas.TRAIN_STEPS))
