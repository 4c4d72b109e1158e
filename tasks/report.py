"""The run report: a Flyte Deck (metric curves over epochs, per-benchmark results) and
the plain-text summary that `pyflyte run` prints at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass

from flytekit import Deck, current_context, task

from images import light_image
from flytekit.types.structured import StructuredDataset

from spark_core.config import SparkConfig
from tasks.common import Checkpoint
from tasks.resources import LIGHT

_PER_DATASET = "eval/accuracy/"


def history_of(history: StructuredDataset) -> list[dict]:
    """One merged metrics dict per epoch from the run's metrics table."""
    import pyarrow as pa

    from spark_core import schemas

    return schemas.history_rows(history.open(pa.Table).all())


@task(enable_deck=True, container_image=light_image, resources=LIGHT)
def report(history: StructuredDataset) -> str:
    """history: the run's metrics table (EPOCH_METRICS, the output of finish_tracking)."""
    from spark_core.evaluate.report import deck_html

    epochs = history_of(history)
    last = epochs[-1] if epochs else {}
    per_benchmark = {k[len(_PER_DATASET):]: v for k, v in last.items() if k.startswith(_PER_DATASET)}
    html = deck_html(epochs, per_benchmark=per_benchmark or None)
    Deck("SPARK curves", html)
    return html


@dataclass
class RunSummary:
    """The end-of-run summary. A local `pyflyte run` prints the workflow's outputs with
    repr(), which would squash the text onto one line, so repr() here is the text itself."""

    text: str
    mlflow_run_id: str = ""

    def __repr__(self) -> str:
        return "\n\n" + self.text + "\n"

    __str__ = __repr__


@task(container_image=light_image, resources=LIGHT)
def summarize_run(config: SparkConfig, run_id: str, history: StructuredDataset, policy: Checkpoint) -> RunSummary:
    """Per-epoch accuracy, judge accuracy and reward, and where the checkpoint and the
    MLflow run are (never cached: it reads the run's current MLflow tags)."""
    from spark_core import tracking
    from spark_core.evaluate.report import run_summary

    cfg = config
    try:
        run = tracking.run_info(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow unreachable: the summary still says what is known
        run = {"run_id": run_id, "run_name": "", "experiment": tracking.EXPERIMENT,
               "tracking_uri": f"{tracking.tracking_uri()} (unreachable: {type(e).__name__})"}
    checkpoint = policy.remote_source or policy.path
    text = run_summary(history_of(history), arm=cfg.recycle.arm, preset=cfg.preset, seed=cfg.seed,
                       checkpoint=str(checkpoint), run=run)
    if current_context().execution_id.name != "local":  # a pod's log shows it; locally pyflyte prints the output
        print(text, flush=True)
    return RunSummary(text=text, mlflow_run_id=run_id)
