"""Test-time self-reflection: the model judges its own answer and re-solves when it says No.

Per question, for at most `rounds` rounds:

1. judge: a pointwise Yes/No prompt showing the question and the current final answer
   (never the chain of thought);
2. a ``\\boxed{Yes}`` verdict (case-insensitive) accepts the answer and stops;
3. otherwise the question is solved again with a reflection prompt that shows the
   rejected answer, and the new answer becomes the current one.

An attempt with no ``\\boxed{}`` answer has nothing to judge, so it goes straight to a
re-solve. Every model call is batched over all questions still active in that round.
Results use ``mode="tts"`` and are scored separately from single-pass decoding.
"""

from __future__ import annotations

from typing import Callable

from spark_core import schemas
from spark_core.recycle.templates import POINTWISE_YN, REFLECTION_ANS, Template
from spark_core.reward import extract_boxed, normalize_choice, score_batch
from spark_core.rollout.base import SamplingSpec

# The reference loop judges with its first Yes/No template and re-solves with a prompt
# that states the earlier answer is wrong (the judge has just said so).
JUDGE_TEMPLATE: Template = POINTWISE_YN[0]
REFLECT_TEMPLATE: Template = next(t for t in REFLECTION_ANS if t.asserts_wrong)
NO_ANSWER = "(no final answer)"


def accepts(judge_response: str) -> bool:
    """True when the judge's boxed verdict is Yes (case-insensitive)."""
    verdict = extract_boxed(judge_response)
    return verdict is not None and normalize_choice(verdict) == "yes"


def _prompt(row: dict, text: str, kind: str, tag: str) -> dict:
    """A PROMPTS-shaped row around `text`, keeping the source image."""
    image = row.get("image")
    return {
        "prompt_id": f"{row['prompt_id']}/{tag}",
        "kind": kind,
        "message": schemas.message_json(text, has_image=image is not None),
        "question": text,
        "answer": row["answer"],
        "image": image,
        "source": row.get("source") or "",
        "template_id": "",
        "source_prompt_id": str(row["prompt_id"]),
        "source_rollout_id": "",
    }


def judge_prompt(row: dict, answer: str | None, round_index: int, template: Template = JUDGE_TEMPLATE) -> dict:
    return _prompt(row, template.fill(question=row["question"], answer=answer or NO_ANSWER),
                   schemas.KIND_POINTWISE, f"tts-judge-{round_index}")


def reflect_prompt(row: dict, answer: str | None, round_index: int, template: Template = REFLECT_TEMPLATE) -> dict:
    return _prompt(row, template.fill(question=row["question"], answer=answer or NO_ANSWER),
                   schemas.KIND_REFLECTION, f"tts-reflect-{round_index}")


def self_reflect(backend, rows: list[dict], first_results: list[dict], rounds: int, max_new_tokens: int,
                 timeout_s: float = 5.0, *, accept: Callable[[str], bool] = accepts,
                 judge_template: Template = JUDGE_TEMPLATE,
                 reflect_template: Template = REFLECT_TEMPLATE) -> list[dict]:
    """EVAL_RESULTS rows (mode "tts") after at most `rounds` judge/re-solve rounds.

    `first_results` are the single-pass results of `rows` (same order). `rounds` counts
    the answer attempts (1 + reflections made); `accept` decides a judge verdict.
    """
    if len(rows) != len(first_results):
        raise ValueError(f"{len(rows)} rows but {len(first_results)} first results")
    rounds = max(0, int(rounds))
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    response = [r["response"] for r in first_results]
    answer = [r["extracted"] for r in first_results]
    attempts = [1] * len(rows)
    active = list(range(len(rows)))
    for k in range(rounds):
        if not active:
            break
        to_judge = [i for i in active if answer[i] is not None]
        if to_judge:
            verdicts = backend.generate([judge_prompt(rows[i], answer[i], k, judge_template) for i in to_judge],
                                        spec, desc=f"tts:judge-{k}")
            accepted = {i for i, s in zip(to_judge, verdicts) if accept(s.response)}
            active = [i for i in active if i not in accepted]
        if not active:
            break
        redo = backend.generate([reflect_prompt(rows[i], answer[i], k, reflect_template) for i in active],
                                spec, desc=f"tts:reflect-{k}")
        for i, s in zip(active, redo):
            response[i] = s.response
            answer[i] = extract_boxed(s.response)
            attempts[i] += 1
    scores = score_batch(response, [r["answer"] for r in rows], timeout_s=timeout_s)
    return [
        {"dataset": f["dataset"], "prompt_id": f["prompt_id"], "kind": f["kind"], "mode": "tts",
         "answer": f["answer"], "response": response[i], "extracted": sc["extracted"],
         "correct": sc["reward"] >= 0.5, "rounds": attempts[i]}
        for i, (f, sc) in enumerate(zip(first_results, scores))
    ]
