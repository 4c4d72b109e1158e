"""The run report as a Flyte Deck: metric curves over epochs and per-benchmark results."""

from __future__ import annotations

import json

from flytekit import Deck, task

from images import light_image
from tasks.resources import LIGHT

_PER_DATASET = "eval/accuracy/"


@task(enable_deck=True, container_image=light_image, resources=LIGHT)
def report(history: str) -> str:
    """history: JSON list of each epoch's merged metrics (the output of finish_tracking)."""
    from spark_core.evaluate.report import deck_html

    epochs = json.loads(history or "[]")
    last = epochs[-1] if epochs else {}
    per_benchmark = {k[len(_PER_DATASET):]: v for k, v in last.items() if k.startswith(_PER_DATASET)}
    html = deck_html(epochs, per_benchmark=per_benchmark or None)
    Deck("SPARK curves", html)
    return html
