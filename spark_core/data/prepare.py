"""The data stage: synthetic or user rows for training and evaluation, invalid rows quarantined."""

from __future__ import annotations

import logging
from typing import Callable

from spark_core.data.loader import DataError, load_rows
from spark_core.data.synthetic import synthetic_split

log = logging.getLogger(__name__)


def prepare_splits(data, fetch: Callable[[str], str] = lambda p: p
                   ) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, eval, quarantine) rows. An empty path means the synthetic generator;
    `fetch` turns a path or bucket URI into a local file."""
    quarantine: list[dict] = []

    def load(path: str, split: str) -> list[dict]:
        if not path:
            return synthetic_split(data, split)
        rows, bad = load_rows(fetch(path))
        for b in bad:
            b["reason"] = f"[{path}] {b['reason']}"
        quarantine.extend(bad)
        return rows

    train = load(data.train_path, "train")
    evalset = load(data.eval_path, "eval")
    if quarantine:
        log.warning("quarantined %d invalid rows (see the quarantine artifact)", len(quarantine))
    if not train:
        raise DataError("no valid training rows")
    return train, evalset, quarantine
