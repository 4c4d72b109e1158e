"""Data preparation: synthetic or user data, validated, with a quarantine artifact."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import light_image
from tasks.cache_versions import stage_cache
from tasks.common import cfg_of, provenance, rows_of, to_sd
from tasks.resources import LIGHT

log = logging.getLogger(__name__)


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
def prepare_data(config_json: str) -> PreparedData:
    from spark_core import schemas
    from spark_core.data import load_rows
    from spark_core.data.synthetic import synthetic_split
    from spark_core.data.loader import DataError

    cfg = cfg_of(config_json)
    d = cfg.data
    quarantine: list[dict] = []

    def load(path: str, split: str) -> list[dict]:
        if not path:
            return synthetic_split(d, split)
        rows, bad = load_rows(fetch_local(path), max_pixels=cfg.model.max_pixels)
        for b in bad:
            b["reason"] = f"[{path}] {b['reason']}"
        quarantine.extend(bad)
        return rows

    train = load(d.train_path, "train")
    evalset = load(d.eval_path, "eval")
    if quarantine:
        log.warning("quarantined %d invalid rows (see the quarantine artifact)", len(quarantine))
    if not train:
        raise DataError("no valid training rows")
    meta = provenance(cfg, "data", ("data",))
    return PreparedData(to_sd(train, schemas.PROMPTS, meta), to_sd(evalset, schemas.PROMPTS, meta),
                        to_sd(quarantine, schemas.QUARANTINE, meta))


@task(cache=stage_cache("select_prompts"), container_image=light_image, resources=LIGHT)
def select_prompts(config_json: str, train: StructuredDataset, epoch: int) -> StructuredDataset:
    from spark_core import schemas
    from spark_core.data.batches import select_prompts as select

    cfg = cfg_of(config_json)
    rows = select(cfg, rows_of(train, schemas.PROMPTS), epoch)
    return to_sd(rows, schemas.PROMPTS, provenance(cfg, "select_prompts", ("rollout",), epoch=str(epoch)))
