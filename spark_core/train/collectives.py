"""Every collective of the trainer goes through here, so that no tensor handed to a
process group lives on a device its backend cannot use (NCCL takes only CUDA tensors,
gloo only CPU ones). tests/test_trainer_collectives.py fails if spark_core/train calls
a torch.distributed collective anywhere else.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist

ReduceOp = tdist.ReduceOp


def group_device(group=None) -> torch.device:
    """The device whose tensors the process group's backend exchanges."""
    backend = str(tdist.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_device(t: torch.Tensor, group=None) -> None:
    want = group_device(group)
    if t.device.type != want.type:
        raise RuntimeError(f"a collective got a tensor on {t.device}, but the {tdist.get_backend(group)} process "
                           f"group exchanges {want.type} tensors: build it with device=group_device()")


def all_reduce(t: torch.Tensor, op=ReduceOp.SUM, group=None) -> torch.Tensor:
    """In-place all-reduce of `t` after checking its device."""
    check_device(t, group)
    tdist.all_reduce(t, op=op, group=group)
    return t


def all_reduce_values(values: list[float], op=ReduceOp.SUM, group=None,
                      dtype: torch.dtype = torch.float64) -> list[float]:
    """All-reduce a few Python numbers (flags, counts) on the group's device."""
    t = torch.tensor(values, dtype=dtype, device=group_device(group))
    return all_reduce(t, op=op, group=group).tolist()


def barrier(group=None) -> None:
    tdist.barrier(group=group)


def broadcast_object(obj, src: int = 0, group=None):
    """`src`'s Python object on every rank (pickled; torch puts the bytes on the group's
    device, the current CUDA device under NCCL)."""
    box = [obj]
    tdist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_objects(obj, group=None) -> list:
    """Every rank's Python object, in rank order."""
    out: list = [None] * tdist.get_world_size(group)
    tdist.all_gather_object(out, obj, group=group)
    return out
