"""Benchmark evaluation of one checkpoint on a user file, with a report users can audit.

The headline `accuracy` is single-pass greedy decoding, macro-averaged so that every
benchmark (`dataset` field) weighs the same, as in the paper's tables. Nothing is
dropped silently: quarantined input rows and answers without ``\\boxed{}`` (scored
wrong) are listed in the report. Self-reflection (TTS) results live under their own
`tts_*` keys and never change the single-pass numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from spark_core.config import SparkConfig
from spark_core.data.loader import load_rows
from spark_core.evaluate.core import accuracy_by, greedy_results
from spark_core.evaluate.tts import self_reflect

RESPONSE_TAIL = 200  # characters of a response kept in the report for unextracted answers


def score_summary(results: list[dict]) -> dict[str, Any]:
    """Per-benchmark, macro and micro accuracy, and the answers that had no \\boxed{}."""
    if not results:
        return {"n": 0, "accuracy": float("nan"), "accuracy_micro": float("nan"), "per_benchmark": {},
                "unextracted_count": 0, "unextracted": []}
    per = accuracy_by(results, "dataset")
    counts = Counter(r["dataset"] for r in results)
    correct = Counter(r["dataset"] for r in results if r["correct"])
    missing = [r for r in results if r["extracted"] is None]
    return {
        "n": len(results),
        "accuracy": sum(per.values()) / len(per),
        "accuracy_micro": sum(bool(r["correct"]) for r in results) / len(results),
        "per_benchmark": {d: {"n": counts[d], "correct": correct[d], "accuracy": acc} for d, acc in per.items()},
        "unextracted_count": len(missing),
        "unextracted": [{"prompt_id": r["prompt_id"], "dataset": r["dataset"],
                         "response_tail": (r["response"] or "")[-RESPONSE_TAIL:]} for r in missing],
    }


def evaluate_benchmark(model_dir: str, data_path: str, cfg: SparkConfig, *, tts_rounds: int | None = None,
                       max_new_tokens: int | None = None, backend=None) -> tuple[list[dict], dict[str, Any]]:
    """(EVAL_RESULTS rows, report) for the checkpoint in `model_dir` on `data_path`.

    tts_rounds: None or 0 = single pass only; R > 0 adds self-reflection with at most R
    reflections per question (cfg.eval.tts_rounds is the usual value).
    backend: anything with `.generate(rows, spec, desc)`; default an HFBackend on model_dir.
    """
    rows, quarantined = load_rows(data_path)
    max_new = int(max_new_tokens or cfg.eval.max_new_tokens)
    if backend is None:
        from spark_core.rollout.base import make_backend

        backend = make_backend(cfg.rollout.backend, model_dir, cfg.model)
    single = greedy_results(backend, rows, max_new, "single", cfg.reward.timeout_s, desc="eval:benchmark")
    s = score_summary(single)
    report: dict[str, Any] = {
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "max_new_tokens": max_new,
        "decoding": "greedy",
        "n_loaded": len(rows),
        "n_quarantined": len(quarantined),
        "quarantine_by_field": dict(Counter(q["field"] for q in quarantined)),
        "quarantined": [{k: q[k] for k in ("row_index", "row_id", "field", "reason")} for q in quarantined],
        **s,
    }
    results = list(single)
    if tts_rounds:
        tts = self_reflect(backend, rows, single, int(tts_rounds), max_new, cfg.reward.timeout_s)
        t = score_summary(tts)
        report.update({
            "tts_rounds": int(tts_rounds),
            "tts_accuracy": t["accuracy"],
            "tts_accuracy_micro": t["accuracy_micro"],
            "tts_per_benchmark": t["per_benchmark"],
            "tts_unextracted_count": t["unextracted_count"],
            "tts_unextracted": t["unextracted"],
            "tts_reflected": sum(r["rounds"] > 1 for r in tts),
            "tts_mean_rounds": sum(r["rounds"] for r in tts) / len(tts),
            # how reflection moved answers, in both directions
            "tts_wrong_to_right": sum(not a["correct"] and b["correct"] for a, b in zip(single, tts)),
            "tts_right_to_wrong": sum(a["correct"] and not b["correct"] for a, b in zip(single, tts)),
        })
        results += tts
    return results, report
