"""Data preparation: synthetic or user data, validated, with a quarantine artifact."""

from __future__ import annotations

import os
from typing import NamedTuple

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.cache_versions import stage_cache
from spark_core.config import DataConfig, RolloutConfig, StageConfig
from tasks.common import provenance, rows_of, to_sd
from tasks.resources import LIGHT

class PreparedData(NamedTuple):
    train: StructuredDataset
    eval: StructuredDataset
    quarantine: StructuredDataset


def fetch_local(path: str) -> str:
    """A local copy of a data file or directory given as a bucket URI (s3://, gs://, ...).

    A JSON/JSONL file whose rows name image files should be passed as its directory
    (ending in "/", holding the file and the images); Parquet with embedded image
    bytes can be passed as the file itself.
    """
    if "://" not in path or path.startswith("file://"):
        return path.removeprefix("file://")
    from flytekit.types.directory import FlyteDirectory
    from flytekit.types.file import FlyteFile

    if path.endswith("/"):
        local = FlyteDirectory(path).download()
        files = [f for f in sorted(os.listdir(local)) if f.endswith((".json", ".jsonl", ".parquet"))]
        if len(files) != 1:
            raise ValueError(f"{path} must hold exactly one .json/.jsonl/.parquet data file, found {files}")
        return os.path.join(local, files[0])
    return FlyteFile(path).download()


@task(cache=stage_cache("data"), container_image=light_image, resources=LIGHT)
def prepare_data(data: DataConfig) -> PreparedData:
    from spark_core import schemas
    from spark_core.data.prepare import prepare_splits

    cfg = StageConfig("data", data=data)
    train, evalset, quarantine = prepare_splits(data, fetch_local)
    meta = provenance(cfg, "data", ("data",))
    return PreparedData(to_sd(train, schemas.PROMPTS, meta), to_sd(evalset, schemas.PROMPTS, meta),
                        to_sd(quarantine, schemas.QUARANTINE, meta))


@task(cache=stage_cache("select_prompts"), container_image=light_image, resources=LIGHT)
def select_prompts(rollout: RolloutConfig, seed: int, train: StructuredDataset, epoch: int) -> StructuredDataset:
    from spark_core import schemas
    from spark_core.data.batches import select_prompts as select

    cfg = StageConfig("select_prompts", rollout=rollout, seed=seed)
    rows = select(cfg, rows_of(train, schemas.PROMPTS), epoch)
    return to_sd(rows, schemas.PROMPTS, provenance(cfg, "select_prompts", ("rollout",), epoch=str(epoch)))
