"""A segment: K SPARK steps (epochs) in one process group, rollout and training colocated.

Each epoch is spark_core.epoch's, over SegmentStages (spark_core/segment_stages.py):
the same stage bodies as the fine-grained tasks, on live objects.

The trainer (GRPOTrainer, or anything with its interface) lives for the whole segment,
so the optimizer state stays in memory; the rollout engine shares its process and GPUs
(spark_core.rollout.colocated: `sync` before generating, `release` before training).
Each pass is still 64 prompts x 8 samples per policy update on the 7B preset, and the
recycled pass is generated after the policy update of the same epoch: the on-policy
batch of SPARK is unchanged, only the Flyte node boundary moves.

Resume: after every finished epoch but the last, the trainer state, the queue, the
artifacts so far and the metrics are saved as one slot under `checkpoints.local_dir`
and published (Flyte's intra-task checkpoint, or a directory on the shared state
volume); a restarted segment of the same inputs continues after the last saved epoch.

Every rank runs this function. Generation is split over data-parallel groups of
`tensor_parallel_size` ranks and gathered; everything else is computed on rank 0 and
broadcast, so all ranks train on the same rows.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from spark_core import schemas
from spark_core.checkpoint import Checkpoints, Pointer, Ranks, ResumeSlots
from spark_core.config import SparkConfig
from spark_core.epoch import Carry, run_epochs
from spark_core.segment_stages import SegmentStages

log = logging.getLogger(__name__)

CRASH_AFTER_EPOCH_ENV = "SPARK_FAULT_CRASH_SEGMENT_AFTER_EPOCH"  # test hook: fail once this many epochs are done
PROGRESS_FILE = "spark_segment.json"
PROGRESS = Pointer(PROGRESS_FILE, key="key", count="done")  # the slot's payload sits at its top
# artifact name -> schema of its rows (each row also carries its epoch)
ARTIFACTS = {"rollouts": schemas.ROLLOUTS, "scored": schemas.SCORED_ROLLOUTS, "recycled": schemas.PROMPTS,
             "eval": schemas.EVAL_RESULTS, "steps": schemas.TRAIN_STEPS}


def with_epoch(schema: pa.Schema) -> pa.Schema:
    """A stage schema plus the epoch of each row (segment outputs hold several epochs)."""
    return pa.schema(list(schema) + [("epoch", pa.int32())], metadata=schema.metadata)


@dataclass
class SegmentResult:
    artifacts: dict[str, list[dict]]  # ARTIFACTS name -> rows (with "epoch")
    queue: list[dict]  # recycled prompts still waiting after the last epoch
    epoch_metrics: list[dict[str, float]]  # one merged dict per epoch, as the fine-grained loop logs
    first_epoch: int
    resumed_epochs: int  # epochs restored from a checkpoint instead of recomputed
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- distribution


def _dist():
    """torch.distributed when this segment runs on several ranks, else None."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        return td
    return None


def _rank() -> int:
    td = _dist()
    return td.get_rank() if td else 0


def _bcast(obj):
    """rank 0's value on every rank."""
    if _dist() is None:
        return obj
    from spark_core.train.collectives import broadcast_object

    return broadcast_object(obj if _rank() == 0 else None)


def _barrier() -> None:
    if _dist() is not None:
        from spark_core.train.collectives import barrier

        barrier()


class SplitGenerate:
    """A rollout engine whose generate() splits prompts over data-parallel groups of
    `tp` ranks and returns every sample, in prompt order, on every rank."""

    def __init__(self, engine, tp: int = 1):
        self.engine, self.tp = engine, max(1, tp)

    # the engine's HF model and processor where it has them (ColocatedHF), so the
    # evaluation's teacher-forced metrics run in a segment as in the evaluate task
    @property
    def model(self):
        return getattr(self.engine, "model", None)

    @property
    def processor(self):
        return getattr(self.engine, "processor", None)

    def generate(self, prompts, spec, desc: str = "rollout"):
        td = _dist()
        if td is None:
            return self.engine.generate(prompts, spec, desc=desc)
        world, rank = td.get_world_size(), td.get_rank()
        groups = max(1, world // self.tp)
        group = rank // self.tp
        from spark_core.train.collectives import all_gather_objects

        mine = self.engine.generate(prompts[group::groups], spec, desc=desc)
        gathered = all_gather_objects(mine if rank % self.tp == 0 else None)
        by_prompt: dict[str, list] = {}
        for part in gathered:
            for s in part or []:
                by_prompt.setdefault(s.prompt_id, []).append(s)
        return [s for p in prompts for s in sorted(by_prompt.get(p["prompt_id"], []), key=lambda s: s.sample_index)]


# ---------------------------------------------------------------- resume slots


def _write_rows(path: str, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(schemas.table(rows, schema), path)


def _read_rows(path: str, schema: pa.Schema) -> list[dict]:
    return schemas.conform(pq.read_table(path), schema).to_pylist()


def _slots(ck: Checkpoints, key: str) -> ResumeSlots:
    """The segment's slots; rank 0 keeps the files and its choice holds for every rank."""
    return ResumeSlots(ck, key, PROGRESS, Ranks(rank=_rank(), local_rank=_rank(), barrier=_barrier, agree=_bcast))


def _save_slot(ck: Checkpoints, trainer, key: str, done: int, queue: list[dict],
               artifacts: dict[str, list[dict]], metrics: list[dict]) -> None:
    """Trainer state on every rank, the rows on rank 0; the progress pointer last."""
    def write(slot: str, _tag: str) -> None:
        trainer.save_state(os.path.join(slot, "state"))
        if _rank() == 0:
            for name, schema in ARTIFACTS.items():
                _write_rows(os.path.join(slot, f"{name}.parquet"), artifacts[name], with_epoch(schema))
            _write_rows(os.path.join(slot, "queue.parquet"), queue, schemas.PROMPTS)

    _slots(ck, key).save(done, write, {"metrics": metrics})


def find_resume(ck: Checkpoints | None, key: str) -> dict | None:
    """The newest saved slot of this segment (same key), from the last attempt's
    published checkpoint or from a live slot in local_dir; None to start afresh."""
    return _slots(ck, key).find() if ck is not None else None


# ---------------------------------------------------------------- the loop


def run_segment(cfg: SparkConfig, *, make_trainer: Callable[[str | None], Any], make_engine: Callable[[Any], Any],
                train: list[dict], eval_prompts: list[dict], judge_prompts: list[dict], queue: list[dict],
                first_epoch: int, n_epochs: int, state_in: str | None, key: str,
                checkpoints: Checkpoints | None = None, desc: str = "segment") -> tuple[SegmentResult, Any]:
    """Run epochs first_epoch .. first_epoch + n_epochs - 1 (spark_core.epoch). Returns
    the result (the same on every rank) and the live trainer, for the caller to save."""
    t_start = time.time()
    resume = find_resume(checkpoints, key)
    artifacts: dict[str, list[dict]] = {name: [] for name in ARTIFACTS}
    metrics: list[dict] = []
    done = 0
    if resume is not None:
        done = int(resume["done"])
        metrics = list(resume["metrics"])
        if _rank() == 0:
            artifacts = {n: _read_rows(os.path.join(resume["load_dir"], f"{n}.parquet"), with_epoch(s))
                         for n, s in ARTIFACTS.items()}
            queue = _read_rows(os.path.join(resume["load_dir"], "queue.parquet"), schemas.PROMPTS)
        artifacts, queue = _bcast((artifacts, queue))
        log.warning("%s: resuming after %d finished epochs (at epoch %d)", desc, done, first_epoch + done)
    trainer = make_trainer(os.path.join(resume["load_dir"], "state") if resume is not None else state_in)
    engine = make_engine(trainer)
    ops = SegmentStages(cfg, trainer=trainer, engine=engine, gen=SplitGenerate(engine, cfg.rollout.tensor_parallel_size),
                        train=train, eval_prompts=eval_prompts, judge_prompts=judge_prompts, artifacts=artifacts,
                        bcast=_bcast, rank=_rank(), desc=desc)
    crash_after = int(os.environ.get(CRASH_AFTER_EPOCH_ENV, "0") or "0")

    def after_epoch(i: int, carry: Carry, logs: list[dict]) -> None:
        n_done = done + i
        if checkpoints is not None and n_done < n_epochs:
            t = time.time()
            _save_slot(checkpoints, trainer, key, n_done, carry.queue, artifacts, metrics + logs)
            ops.timings["checkpoint"] += time.time() - t
        if crash_after and first_epoch + n_done == crash_after:
            raise RuntimeError(f"{CRASH_AFTER_EPOCH_ENV}={crash_after}: simulated crash after epoch {first_epoch + n_done}")

    carry, logs = run_epochs(cfg, ops, first_epoch + done, n_epochs - done, Carry(trainer, None, queue), after_epoch)
    result = SegmentResult(artifacts=artifacts, queue=carry.queue, epoch_metrics=metrics + logs, first_epoch=first_epoch,
                           resumed_epochs=done, seconds=time.time() - t_start, timings=ops.timings)
    return result, trainer


def clear_checkpoints(ck: Checkpoints | None) -> None:
    """A finished segment's resume slots are not needed any more (every rank calls it)."""
    if ck is not None:
        _slots(ck, "").clear()
