"""Task resources, from the `cluster` section of the preset chosen at registration.

Task specs are fixed when tasks are serialized, so the preset that sizes pods comes
from the SPARK_PRESET environment variable (default tiny-cpu), e.g.
`SPARK_PRESET=7b-8xh100 pyflyte run --remote workflows/spark.py spark ...`. The
dynamic epoch loop re-serializes its tasks inside its own pod, so the same variable
is passed to that pod (workflows/spark.py).
"""

from __future__ import annotations

import os

from flytekit import Resources

from spark_core.config import StageResources, preset

PRESET = os.environ.get("SPARK_PRESET", "tiny-cpu")
CLUSTER = preset(PRESET).cluster


def stage_resources(stage: StageResources) -> Resources:
    """Requests and limits (equal, so pods get a guaranteed QoS), GPUs included."""
    if stage.gpu:
        return Resources(cpu=(stage.cpu, stage.cpu), mem=(stage.mem, stage.mem),
                         gpu=(str(stage.gpu), str(stage.gpu)))
    return Resources(cpu=(stage.cpu, stage.cpu), mem=(stage.mem, stage.mem))


def stage_accelerator(stage: StageResources):
    from flytekit.extras.accelerators import GPUAccelerator

    return GPUAccelerator(stage.accelerator) if stage.accelerator else None


LIGHT = stage_resources(CLUSTER.light)
ROLLOUT = stage_resources(CLUSTER.rollout)
UPDATE = stage_resources(CLUSTER.update)
ROLLOUT_ACCELERATOR = stage_accelerator(CLUSTER.rollout)
UPDATE_ACCELERATOR = stage_accelerator(CLUSTER.update)
