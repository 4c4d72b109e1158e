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
SEGMENT = stage_resources(CLUSTER.segment)
ROLLOUT_ACCELERATOR = stage_accelerator(CLUSTER.rollout)
UPDATE_ACCELERATOR = stage_accelerator(CLUSTER.update)
SEGMENT_ACCELERATOR = stage_accelerator(CLUSTER.segment)

# The shared state volume: the preset's claim, or SPARK_STATE_VOLUME_CLAIM when set
# ("" turns it off, e.g. on a cluster without a ReadWriteMany storage class).
STATE_CLAIM = os.environ.get("SPARK_STATE_VOLUME_CLAIM", CLUSTER.state_volume_claim)
STATE_MOUNT = CLUSTER.state_mount_path
STATE_DIR_ENV = "SPARK_STATE_DIR"  # where a task finds the mounted volume (unset: object storage)


def state_pod_template(claim: str, mount_path: str):
    """A pod template mounting the state claim at mount_path in the task's container,
    or None without a claim. /dev/shm comes from the task's shared_memory flag."""
    if not claim:
        return None
    from flytekit import PodTemplate
    from kubernetes.client import (V1Container, V1PersistentVolumeClaimVolumeSource, V1PodSpec, V1Volume,
                                   V1VolumeMount)

    return PodTemplate(
        primary_container_name="primary",
        pod_spec=V1PodSpec(
            containers=[V1Container(name="primary", volume_mounts=[V1VolumeMount(name="spark-state",
                                                                                 mount_path=mount_path)])],
            volumes=[V1Volume(name="spark-state",
                              persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(claim_name=claim))]),
    )


STATE_POD_TEMPLATE = state_pod_template(STATE_CLAIM, STATE_MOUNT)
STATE_ENV = {STATE_DIR_ENV: STATE_MOUNT} if STATE_CLAIM else {}
