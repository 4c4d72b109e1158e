"""Verifiable 0/1 reward on the last \\boxed{} answer (math, yes/no and A/B verdicts)."""

from spark_core.reward.verifier import (
    JUDGE_LABELS,
    extract_boxed,
    is_judge_label,
    normalize_choice,
    normalize_math,
    score_batch,
    shutdown_workers,
    verify,
)

__all__ = [
    "JUDGE_LABELS",
    "extract_boxed",
    "is_judge_label",
    "normalize_choice",
    "normalize_math",
    "score_batch",
    "shutdown_workers",
    "verify",
]
