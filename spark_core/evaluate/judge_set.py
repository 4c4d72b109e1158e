"""A fixed, held-out, balanced set of judge prompts for measuring the model as a judge.

For every eval problem: one pointwise prompt on the true answer, one pointwise prompt
on a wrong answer, and one pairwise prompt (true vs wrong, random order). Wrong
answers are the starting policy's own wrong rollouts where it produced any (the
mistakes a judge meets in training), else a nearby wrong number; either way the
verifier confirms each one is wrong, so no label calls a correct answer wrong. The
labels are balanced (Yes/No, A/B), so a judge that always gives one verdict scores
50%, not the share of wrong rollouts.
"""

from __future__ import annotations

import random

from spark_core import schemas
from spark_core.config import SparkConfig
from spark_core.recycle.build import stable_seed
from spark_core.recycle.build import wrong_answers as near_wrong_answers
from spark_core.recycle.templates import PAIRWISE, POINTWISE
from spark_core.reward import score_batch
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.hf import HFBackend

JUDGE_EVAL_SAMPLES = 4  # rollouts per eval problem used to find realistic wrong answers


def verified_wrong(rows: list[dict], wrong_answers: dict[str, list[str]], timeout_s: float = 5.0) -> dict[str, list[str]]:
    """The candidate wrong answers that the verifier really scores as wrong, per prompt id.

    Rollout answers were scored once already, but a caller may pass any list; a
    candidate equal to the truth, equivalent to it ("0.50" for 0.5) or undecidable
    (timeout, error) is dropped."""
    pairs = [(r["prompt_id"], w.strip(), str(r["answer"]).strip())
             for r in rows for w in wrong_answers.get(r["prompt_id"], []) if isinstance(w, str) and w.strip()]
    scores = score_batch([f"\\boxed{{{w}}}" for _, w, _ in pairs], [t for _, _, t in pairs], timeout_s=timeout_s)
    out: dict[str, list[str]] = {}
    for (pid, w, _), sc in zip(pairs, scores):
        if sc["status"] == "wrong" and w not in out.setdefault(pid, []):
            out[pid].append(w)
    return out


def judge_draws(rows: list[dict], wrong_answers: dict[str, list[str]], seed: int,
                timeout_s: float = 5.0) -> list[dict]:
    """What each row's three judge prompts show: the truth, one verified wrong answer (a
    rollout's where one survives the check, else a verified near miss) and its origin,
    the templates, and whether the pair shows the truth first. Seeded by `seed` alone."""
    rng = random.Random(stable_seed("judge-eval", seed))
    pools = verified_wrong(rows, wrong_answers, timeout_s)
    need = [r for r in rows if not pools.get(r["prompt_id"])]
    synthetic = dict(zip([r["prompt_id"] for r in need],
                         near_wrong_answers([str(r["answer"]).strip() for r in need],
                                            random.Random(stable_seed("judge-eval-wrong", seed)), timeout_s=timeout_s)))
    out = []
    for r in rows:
        pool = pools.get(r["prompt_id"])
        wrong, origin = (rng.choice(pool), "rollout") if pool else (synthetic[r["prompt_id"]], "synthetic")
        out.append({"row": r, "truth": str(r["answer"]).strip(), "wrong": wrong, "origin": origin,
                    "t_right": rng.choice(POINTWISE), "t_wrong": rng.choice(POINTWISE), "t_pair": rng.choice(PAIRWISE),
                    "truth_first": rng.random() < 0.5})
    return out


def balanced_judge_prompts(rows: list[dict], wrong_answers: dict[str, list[str]], seed: int,
                           timeout_s: float = 5.0) -> list[dict]:
    """Three judge prompts per row: see `judge_draws` and `judge_prompts`."""
    return judge_prompts(judge_draws(rows, wrong_answers, seed, timeout_s))


def judge_prompts(draws: list[dict]) -> list[dict]:
    """The prompts `judge_draws` describes, three per row: pointwise on the truth,
    pointwise on the wrong answer, pairwise between them."""
    out = []
    for d in draws:
        r, truth, wrong = d["row"], d["truth"], d["wrong"]
        q = r.get("question") or ""

        def row(kind: str, tid: str, text: str, label: str, n: int) -> dict:
            return {"prompt_id": f"{r['prompt_id']}/judge-eval-{n}", "kind": kind,
                    "message": schemas.message_json(text, has_image=r.get("image") is not None),
                    "question": text, "answer": label, "image": r.get("image"), "source": r.get("source") or "",
                    "template_id": tid, "source_prompt_id": r["prompt_id"], "source_rollout_id": d["origin"]}

        t = d["t_right"]
        out.append(row(schemas.KIND_POINTWISE, t.id, t.fill(question=q, answer=truth), t.correct_label, 0))
        t = d["t_wrong"]
        out.append(row(schemas.KIND_POINTWISE, t.id, t.fill(question=q, answer=wrong), t.wrong_label, 1))
        t = d["t_pair"]
        a, b, label = (truth, wrong, "A") if d["truth_first"] else (wrong, truth, "B")
        out.append(row(schemas.KIND_PAIRWISE, t.id, t.fill(question=q, answer_a=a, answer_b=b), label, 2))
    return out


def starting_wrong_answers(cfg: SparkConfig, model_dir: str, rows: list[dict]) -> dict[str, list[str]]:
    """The wrong final answers among JUDGE_EVAL_SAMPLES rollouts of each row, per prompt id
    (within the evaluation's token budget: the judge set is part of the evaluation)."""
    backend = HFBackend(model_dir, cfg.model)
    spec = SamplingSpec(n=JUDGE_EVAL_SAMPLES, temperature=1.0, max_new_tokens=cfg.eval.max_new_tokens,
                        seed=cfg.seed + 7)
    samples = backend.generate(rows, spec, desc="judge-set:rollout")
    answers = {r["prompt_id"]: r["answer"] for r in rows}
    scores = score_batch([s.response for s in samples], [answers[s.prompt_id] for s in samples],
                         timeout_s=cfg.reward.timeout_s)
    wrong: dict[str, list[str]] = {}
    for s, sc in zip(samples, scores):
        if sc["reward"] < 0.5 and sc["status"] == "wrong" and sc["extracted"]:
            wrong.setdefault(s.prompt_id, []).append(sc["extracted"].strip())
    return wrong


def build_judge_eval_set(cfg: SparkConfig, model_dir: str, eval_rows: list[dict]) -> list[dict]:
    rows = eval_rows[: cfg.eval.judge_samples]
    return balanced_judge_prompts(rows, starting_wrong_answers(cfg, model_dir, rows), cfg.seed,
                                  timeout_s=cfg.reward.timeout_s)
