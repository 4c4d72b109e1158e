"""The declared schema of every artifact that moves between stages (one place).

Images travel inside the Parquet files as PNG bytes, so an artifact is
self-contained on a cluster: no stage reads a side path written by another.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa

# kinds of prompt: original problems and the three recycled kinds
KIND_SOLVE = "solve"
KIND_POINTWISE = "pointwise"
KIND_PAIRWISE = "pairwise"
KIND_REFLECTION = "reflection"
KINDS = (KIND_SOLVE, KIND_POINTWISE, KIND_PAIRWISE, KIND_REFLECTION)

# Prompts: the training/eval problems, and recycled samples (same columns, so the
# same rollout stage serves both). For originals the provenance columns are "".
PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("kind", pa.string()),
        ("message", pa.string()),  # JSON chat list, image item first (SPARK row format)
        ("question", pa.string()),  # plain question text, without the answer-format suffix
        ("answer", pa.string()),  # label checked by the verifier
        ("image", pa.binary()),  # PNG bytes; null for text-only rows
        ("source", pa.string()),  # dataset / generator task name
        ("template_id", pa.string()),
        ("source_prompt_id", pa.string()),
        ("source_rollout_id", pa.string()),
    ]
)

# Rollouts: G samples per prompt with the tokens and behaviour log-probs the update needs.
ROLLOUTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("rollout_id", pa.string()),
        ("kind", pa.string()),
        ("sample_index", pa.int32()),
        ("answer", pa.string()),
        ("response", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("response_token_ids", pa.list_(pa.int32())),
        ("old_logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),  # "stop" | "length"
    ]
)

# Scored rollouts: rollouts plus the verifier's named sub-scores.
SCORED_ROLLOUTS = pa.schema(
    list(ROLLOUTS)
    + [
        ("reward", pa.float32()),
        ("extracted", pa.string()),  # content of the last \boxed{}; null if none
        ("verify_status", pa.string()),  # ok | wrong | no_boxed | timeout | error
        ("verify_ms", pa.float32()),
    ]
)

# Rows that failed validation, with the reason; the run goes on without them.
QUARANTINE = pa.schema(
    [
        ("row_index", pa.int64()),
        ("row_id", pa.string()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),  # the offending row as JSON, truncated
    ]
)

# Per-sample evaluation results (single pass and self-reflection kept apart by `mode`).
EVAL_RESULTS = pa.schema(
    [
        ("dataset", pa.string()),
        ("prompt_id", pa.string()),
        ("kind", pa.string()),
        ("mode", pa.string()),  # single | tts | judge
        ("answer", pa.string()),
        ("response", pa.string()),
        ("extracted", pa.string()),
        ("correct", pa.bool_()),
        ("rounds", pa.int32()),
    ]
)

# Per-step training metrics written by the update stage.
TRAIN_STEPS = pa.schema(
    [
        ("step", pa.int32()),
        ("phase", pa.string()),  # policy | recycled
        ("loss", pa.float32()),
        ("pg_loss", pa.float32()),
        ("kl", pa.float32()),
        ("clip_frac", pa.float32()),
        ("grad_norm", pa.float32()),
        ("lr", pa.float32()),
        ("skipped", pa.bool_()),
    ]
)

# Epoch metrics: the run's history, one row per epoch (0 = the starting model) and one
# column per metric key ("eval/accuracy", "policy/reward_mean", ...), null where an
# epoch did not measure it (e.g. no evaluation that epoch). Its columns are the keys the
# stages report, so only the epoch column is fixed here.
EPOCH_METRICS = pa.schema([("epoch", pa.int32())])


def history_table(history: list[dict[str, float]]) -> pa.Table:
    """EPOCH_METRICS from one merged metrics dict per epoch (numbers only, keys sorted)."""
    keys = sorted({k for m in history for k, v in m.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"})
    cols = {"epoch": pa.array(range(len(history)), pa.int32())}
    for k in keys:
        cols[k] = pa.array([float(m[k]) if isinstance(m.get(k), (int, float)) else None for m in history], pa.float64())
    return pa.table(cols)


def history_rows(t: pa.Table) -> list[dict[str, float]]:
    """The merged metrics dict of each epoch back from EPOCH_METRICS (nulls left out)."""
    return [{k: v for k, v in row.items() if k != "epoch" and v is not None}
            for row in t.sort_by("epoch").to_pylist()]


ALL = {
    "prompts": PROMPTS,
    "rollouts": ROLLOUTS,
    "scored_rollouts": SCORED_ROLLOUTS,
    "quarantine": QUARANTINE,
    "eval_results": EVAL_RESULTS,
    "train_steps": TRAIN_STEPS,
}


def table(rows: Iterable[dict[str, Any]], schema: pa.Schema, metadata: dict[str, str] | None = None) -> pa.Table:
    """Build a table that conforms exactly to `schema` (missing columns -> error)."""
    rows = list(rows)
    cols = {}
    for f in schema:
        try:
            cols[f.name] = pa.array([r[f.name] for r in rows], type=f.type)
        except KeyError as e:
            raise KeyError(f"row is missing column {f.name!r} of schema") from e
    t = pa.table(cols, schema=schema)
    return with_metadata(t, metadata) if metadata else t


def with_metadata(t: pa.Table, metadata: dict[str, str]) -> pa.Table:
    """Attach provenance (code version, config hash, input hashes) to a table."""
    existing = dict(t.schema.metadata or {})
    existing.update({k.encode(): str(v).encode() for k, v in metadata.items()})
    return t.replace_schema_metadata(existing)


def provenance(t: pa.Table) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items() if not k.startswith(b"pandas")}


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """Check a table read back from a file against the declared schema; reorder columns."""
    missing = [f.name for f in schema if f.name not in t.column_names]
    if missing:
        raise ValueError(f"artifact is missing columns {missing}; expected schema {schema.names}")
    meta = t.schema.metadata
    t = t.select(schema.names).cast(schema)
    return t.replace_schema_metadata(meta) if meta else t


def message_json(question_with_suffix: str, has_image: bool) -> str:
    """The SPARK row format: one user turn, the image item first, then the text.

    The image item carries no pixel limits: every consumer (both rollout backends and the
    trainer) resizes with the processor's own limits, set once from `model.min_pixels` /
    `model.max_pixels`, so a per-row copy would have nothing to say."""
    content: list[dict[str, Any]] = []
    if has_image:
        content.append({"type": "image", "image": "embedded"})
    content.append({"type": "text", "text": question_with_suffix})
    return json.dumps([{"role": "user", "content": content}], ensure_ascii=False)
