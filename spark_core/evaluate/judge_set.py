"""A fixed, held-out set of judge prompts for measuring the model as a judge.

Judge prompts are recycled from the starting policy's own rollouts on eval problems,
as in training. Problems whose rollouts give nothing to judge (no extracted answer,
typical of a weak starting model) get a judge prompt on a made-up candidate instead
(the true answer or a nearby wrong one), so every eval problem contributes one.
"""

from __future__ import annotations

import dataclasses
import random

from spark_core.config import SparkConfig
from spark_core.recycle import recycle
from spark_core.recycle.build import judge_sample_for_bootstrap, stable_seed
from spark_core.reward import score_batch
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.hf import HFBackend

JUDGE_EVAL_SAMPLES = 4  # rollouts per eval prompt used to make judge prompts


def build_judge_eval_set(cfg: SparkConfig, model_dir: str, eval_rows: list[dict]) -> list[dict]:
    backend = HFBackend(model_dir, cfg.model)
    rows = eval_rows[: cfg.eval.judge_samples]
    spec = SamplingSpec(n=JUDGE_EVAL_SAMPLES, temperature=1.0, max_new_tokens=cfg.rollout.max_new_tokens,
                        seed=cfg.seed + 7)
    samples = backend.generate(rows, spec, desc="judge-set:rollout")
    answers = {r["prompt_id"]: r["answer"] for r in rows}
    scores = score_batch([s.response for s in samples], [answers[s.prompt_id] for s in samples],
                         timeout_s=cfg.reward.timeout_s)
    scored = [{"prompt_id": s.prompt_id, "rollout_id": f"{s.prompt_id}#judge-eval.{s.sample_index}",
               "sample_index": s.sample_index, "response": s.response, "reward": sc["reward"],
               "extracted": sc["extracted"], "verify_status": sc["status"]} for s, sc in zip(samples, scores)]
    # judge data only, one per prompt, however the run's arm recycles
    rc = dataclasses.replace(cfg.recycle, arm="policy_reward", seed=cfg.recycle.seed + 991)
    judged = recycle(rows, scored, rc, batch_size=len(rows), epoch=0)
    covered = {r["source_prompt_id"] for r in judged}
    rng = random.Random(stable_seed("judge-eval-topup", cfg.seed))
    for r in rows:
        if r["prompt_id"] not in covered:
            sample, _ = judge_sample_for_bootstrap(r, rng)
            judged.append(dict(sample, prompt_id=f"{r['prompt_id']}/judge-eval-synthetic",
                               source_rollout_id="synthetic-candidate"))
    return judged
