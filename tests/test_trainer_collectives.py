"""Every tensor the trainer hands to a collective lives on the process group's device.

NCCL takes only CUDA tensors; a flag built on the CPU and all-reduced over NCCL fails
the first GPU update. On a CPU (gloo) both are the CPU, so the guard is structural:
spark_core calls collectives only through spark_core/train/collectives.py, whose
helpers build their tensors on the group's device and refuse any other device.
"""

from __future__ import annotations

import ast
import os

import pytest
import torch

from spark_core.train import collectives as comm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "reduce", "gather", "scatter",
               "all_to_all", "all_to_all_single", "send", "recv", "isend", "irecv", "barrier"}
# Outside collectives.py only these helpers may be used: they build their tensors themselves.
ALLOWED_HELPERS = {"all_reduce_values", "barrier", "group_device", "ReduceOp"}


def _direct_collectives(source: str) -> list[str]:
    """Calls of torch.distributed collectives (torch.distributed.x, dist.x, tdist.x or a
    name imported from torch.distributed) and of the raw comm.all_reduce helper."""
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            imported |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute):
            owner = ast.unparse(f.value)
            if f.attr in COLLECTIVES and owner in ("torch.distributed", "dist", "tdist"):
                found.append(f"{owner}.{f.attr} (line {node.lineno})")
            if owner == "comm" and f.attr not in ALLOWED_HELPERS:
                found.append(f"comm.{f.attr} (line {node.lineno})")
        elif isinstance(f, ast.Name) and f.id in imported:
            found.append(f"{f.id} (line {node.lineno})")
    return found


def test_scanner_finds_direct_collectives():
    bad = ("import torch\nfrom torch.distributed import all_reduce as ar\n"
           "def f(t):\n    torch.distributed.all_reduce(t)\n    ar(t)\n    comm.all_reduce(t)\n"
           "    torch.distributed.barrier()\n")
    assert len(_direct_collectives(bad)) == 4
    ok = "def f():\n    comm.all_reduce_values([1.0])\n    comm.barrier()\n    torch.distributed.get_rank()\n"
    assert _direct_collectives(ok) == []


def test_spark_core_calls_collectives_only_through_the_helper():
    offenders = {}
    for base, _, files in os.walk(os.path.join(ROOT, "spark_core")):
        for name in files:
            path = os.path.join(base, name)
            if not name.endswith(".py") or path.endswith(os.path.join("train", "collectives.py")):
                continue
            found = _direct_collectives(open(path, encoding="utf-8").read())
            if found:
                offenders[os.path.relpath(path, ROOT)] = found
    assert not offenders, f"collectives called outside spark_core/train/collectives.py: {offenders}"


@pytest.fixture()
def fake_nccl(monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None, group=None: calls.append(t))
    return calls


def test_nccl_group_refuses_a_cpu_tensor(fake_nccl):
    assert comm.group_device() == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="exchanges cuda tensors"):
        comm.all_reduce(torch.ones(2))
    assert fake_nccl == []  # refused before reaching the backend


def test_value_helper_builds_its_tensor_on_the_group_device(monkeypatch):
    made = []
    real_tensor = torch.tensor

    def spy(data, **kw):
        made.append(kw.get("device"))
        return real_tensor(data, **{k: v for k, v in kw.items() if k != "device"})

    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch, "tensor", spy)
    with pytest.raises(RuntimeError, match="exchanges cuda tensors"):  # the spy kept it on the CPU: refused
        comm.all_reduce_values([1.0, 0.0])
    assert made == [torch.device("cuda", 0)]


def test_gloo_group_reduces_cpu_values():
    from spark_core.train.engine import init_distributed

    init_distributed()
    assert torch.distributed.get_backend() == "gloo"
    assert comm.all_reduce_values([1.0, -3.0], op=comm.ReduceOp.MIN) == [1.0, -3.0]
