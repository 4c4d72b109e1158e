"""Helpers shared by the thin Flyte tasks: Parquet I/O, checkpoint hashing, provenance."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from typing import Annotated

import pyarrow as pa
from flytekit import HashMethod, current_context
from flytekit.types.directory import FlyteDirectory
from flytekit.types.structured import StructuredDataset

from spark_core import schemas
from spark_core.config import StageConfig


def dir_digest(d: FlyteDirectory) -> str:
    """Content hash of a checkpoint directory, so downstream caches hit across runs."""
    path = d.path if isinstance(d, FlyteDirectory) else str(d)
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


Checkpoint = Annotated[FlyteDirectory, HashMethod(dir_digest)]


def workdir(name: str) -> str:
    base = current_context().working_directory
    path = tempfile.mkdtemp(prefix=f"{name}-", dir=base)
    return path


def to_sd(rows_or_table, schema: pa.Schema, metadata: dict[str, str] | None = None) -> StructuredDataset:
    t = rows_or_table if isinstance(rows_or_table, pa.Table) else schemas.table(rows_or_table, schema)
    if metadata:
        t = schemas.with_metadata(t, metadata)
    return StructuredDataset(dataframe=t)


def read_sd(sd: StructuredDataset, schema: pa.Schema) -> pa.Table:
    return schemas.conform(sd.open(pa.Table).all(), schema)


def rows_of(sd: StructuredDataset, schema: pa.Schema) -> list[dict]:
    return read_sd(sd, schema).to_pylist()


def code_version() -> str:
    """Git commit of the code that produced an artifact ("unknown" outside a checkout)."""
    env = os.environ.get("SPARK_CODE_VERSION")
    if env:
        return env
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - provenance must never fail a stage
        return "unknown"


def provenance(cfg: StageConfig, stage: str, sections: tuple[str, ...], **inputs: str) -> dict[str, str]:
    return {"spark.stage": stage, "spark.code_version": code_version(),
            "spark.config_hash": cfg.section_hash(*sections), "spark.inputs": json.dumps(inputs, sort_keys=True)}
