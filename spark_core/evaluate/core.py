"""Evaluation of one checkpoint: single-pass accuracy and judge accuracy, kept apart."""

from __future__ import annotations

import time
from collections import defaultdict

from spark_core.reward import score_batch
from spark_core.rollout.base import SamplingSpec


def greedy_results(backend, rows: list[dict], max_new_tokens: int, mode: str, timeout_s: float = 5.0,
                   desc: str = "eval") -> list[dict]:
    """Greedy answers for rows, scored by the verifier; rows without \\boxed{} count as wrong."""
    if not rows:
        return []
    samples = backend.generate(rows, SamplingSpec(n=1, temperature=0.0, max_new_tokens=max_new_tokens), desc=desc)
    scores = score_batch([s.response for s in samples], [r["answer"] for r in rows], timeout_s=timeout_s)
    return [
        {"dataset": r.get("source") or "", "prompt_id": r["prompt_id"], "kind": r["kind"], "mode": mode,
         "answer": r["answer"], "response": s.response, "extracted": sc["extracted"],
         "correct": sc["reward"] >= 0.5, "rounds": 1}
        for r, s, sc in zip(rows, samples, scores)
    ]


def accuracy_by(results: list[dict], key: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        groups[r[key]].append(bool(r["correct"]))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def summarize(solve: list[dict], judge: list[dict]) -> dict[str, float]:
    """Flat metrics: macro accuracy (each dataset weighted equally), per-dataset, judge by kind."""
    m: dict[str, float] = {}
    if solve:
        per = accuracy_by(solve, "dataset")
        m["accuracy"] = sum(per.values()) / len(per)
        m["accuracy_micro"] = sum(r["correct"] for r in solve) / len(solve)
        m["unextracted_rate"] = sum(r["extracted"] is None for r in solve) / len(solve)
        for k, v in per.items():
            m[f"accuracy/{k}"] = v
    if judge:
        for k, v in accuracy_by(judge, "kind").items():
            m[f"judge_accuracy/{k}"] = v
        m["judge_accuracy"] = sum(r["correct"] for r in judge) / len(judge)
    return m


def evaluate(cfg, backend, eval_prompts: list[dict], judge_prompts: list[dict]
             ) -> tuple[list[dict], dict[str, float]]:
    """Greedy single-pass accuracy and judge accuracy: EVAL_RESULTS rows and `eval/...` metrics.

    With `eval.answer_likelihood_problems` > 0 and a backend that holds the HF model, also
    the true answer's mean probability over the first that many problems (`eval/answer_prob`,
    `eval/answer_logprob`) and the right verdict's over the first that many judge prompts
    (`eval/judge_answer_prob`, `eval/judge_answer_logprob`)."""
    t0 = time.time()
    solve = greedy_results(backend, eval_prompts, cfg.eval.max_new_tokens, "single", cfg.reward.timeout_s,
                           desc="eval:solve")
    judge = greedy_results(backend, judge_prompts, cfg.eval.max_new_tokens, "judge", cfg.reward.timeout_s,
                           desc="eval:judge")
    metrics = {f"eval/{k}": v for k, v in summarize(solve, judge).items()}
    n_lik = cfg.eval.answer_likelihood_problems
    if n_lik > 0 and eval_prompts and getattr(backend, "model", None) is not None:
        # only a backend that holds the HF model can score by teacher forcing (vLLM does not)
        from spark_core.evaluate.likelihood import true_answer_metrics

        lik = true_answer_metrics(backend.model, backend.processor, eval_prompts[:n_lik])
        metrics.update({f"eval/{k}": v for k, v in lik.items()})
        # the same for the judge: the probability of the right verdict (label) on judge prompts
        verdict = true_answer_metrics(backend.model, backend.processor, judge_prompts[:n_lik])
        metrics.update({f"eval/judge_{k}": v for k, v in verdict.items()})
    metrics["time/evaluate"] = time.time() - t0
    return solve + judge, metrics
