"""Where the update and segment tasks keep their resume checkpoints (spark_core.checkpoint).

A node-local directory shared by the ranks of one attempt (and by workers the Elastic
agent restarts in the same pod), published through Flyte's intra-task checkpoint so
that the next attempt of the task, in a new pod, restores it. With the state volume
mounted ($SPARK_STATE_DIR) the segment's slots live on the volume instead: every
node sees them and nothing is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Optional

from flytekit.types.directory import FlyteDirectory

from spark_core.checkpoint import Checkpoints, checkpoint_key
from tasks.common import dir_digest
from tasks.resources import STATE_DIR_ENV


def node_dir(kind: str, phase: str, *inputs: str) -> str:
    """A directory every rank on this node agrees on (each Elastic worker has its own
    working directory, but the optimizer state must hold all ranks' shards)."""
    from flytekit import current_context

    ctx = current_context()
    key = hashlib.sha256("|".join((str(ctx.raw_output_prefix), phase) + inputs).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), kind, key)


def state_root() -> str | None:
    """The mounted state volume, if any."""
    root = os.environ.get(STATE_DIR_ENV, "")
    return root if root and os.path.isdir(root) else None


def flyte_checkpoints(local_dir: str) -> Checkpoints:
    """Slots in `local_dir`, published and restored through Flyte's intra-task checkpoint."""
    from flytekit import current_context

    try:
        cp = current_context().checkpoint
    except NotImplementedError:  # a platform without intra-task checkpoints: restarts in this pod only
        return Checkpoints(local_dir)
    return Checkpoints(local_dir, restore=lambda d: cp.restore(d) is not None, publish=cp.save)


def step_checkpoints(phase: str, *inputs: str) -> Checkpoints:
    """The update's resume checkpoints, in a directory of this node keyed by its inputs."""
    return flyte_checkpoints(node_dir("spark-resume", phase, *inputs))


def segment_checkpoints(key: str) -> Checkpoints:
    """The segment's resume slots: on the state volume when mounted, else in the pod's
    temp dir, published through Flyte's intra-task checkpoint."""
    root = state_root()
    if root is not None:
        return Checkpoints(os.path.join(root, "resume", key))
    return flyte_checkpoints(os.path.join(tempfile.gettempdir(), "spark-segment", key))


def input_identity(d: Optional[FlyteDirectory]) -> str:
    """A stable name for an input directory: its content hash when small and local
    (so a rerun of the same inputs finds its resume slots), else its URI."""
    if d is None:
        return ""
    path = str(d.path)
    if os.path.isdir(path) and sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) < 2**30:
        return dir_digest(d)
    return str(getattr(d, "remote_source", None) or path)


def segment_key(config_json: str, first_epoch: int, n_epochs: int, policy: FlyteDirectory,
                state: Optional[FlyteDirectory], ref: FlyteDirectory, queue: list[dict]) -> str:
    """The segment's inputs as a resume key: its slots are only resumed by the same ones."""
    return checkpoint_key([config_json, first_epoch, n_epochs, input_identity(policy), input_identity(state),
                           input_identity(ref)], (r["prompt_id"] for r in queue), length=24)
