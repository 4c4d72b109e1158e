"""Evaluation every epoch: single-pass accuracy and judge accuracy, logged and shown."""

from __future__ import annotations

import json

from flytekit import task
from flytekit.types.structured import StructuredDataset

from images import rollout_image
from tasks.cache_versions import stage_cache
from spark_core.config import PREFIX_SEED, EvalConfig, ModelConfig, RewardConfig, StageConfig
from tasks.common import Checkpoint, provenance, rows_of, to_sd
from tasks.resources import ROLLOUT, ROLLOUT_ACCELERATOR


@task(cache=stage_cache("judge_eval_set"), container_image=rollout_image, resources=ROLLOUT,
      accelerator=ROLLOUT_ACCELERATOR)
def judge_eval_set(model: ModelConfig, eval: EvalConfig, reward: RewardConfig, policy: Checkpoint,
                   eval_prompts: StructuredDataset) -> StructuredDataset:
    """Held-out judge prompts: recycled from the starting policy's rollouts on eval data,
    fixed for the run so judge accuracy is comparable across epochs."""
    from spark_core import schemas
    from spark_core.evaluate.judge_set import build_judge_eval_set

    cfg = StageConfig("judge_eval_set", model=model, eval=eval, reward=reward, seed=PREFIX_SEED)
    rows = build_judge_eval_set(cfg, policy.download(), rows_of(eval_prompts, schemas.PROMPTS))
    return to_sd(rows, schemas.PROMPTS, provenance(cfg, "judge_eval_set", ("eval",)))


@task(cache=stage_cache("evaluate"), container_image=rollout_image, resources=ROLLOUT, accelerator=ROLLOUT_ACCELERATOR,
      enable_deck=True)
def evaluate_policy(model: ModelConfig, eval: EvalConfig, reward: RewardConfig, policy: Checkpoint,
                    eval_prompts: StructuredDataset,
                    judge_prompts: StructuredDataset, epoch: int) -> tuple[StructuredDataset, str]:
    from spark_core import schemas
    from spark_core.evaluate.core import evaluate
    from spark_core.rollout.hf import HFBackend

    cfg = StageConfig("evaluate", model=model, eval=eval, reward=reward)
    backend = HFBackend(policy.download(), model)
    results, metrics = evaluate(cfg, backend, rows_of(eval_prompts, schemas.PROMPTS),
                                rows_of(judge_prompts, schemas.PROMPTS))
    from flytekit import Deck

    from spark_core.evaluate.report import deck_html

    per_benchmark = {k.split("eval/accuracy/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/accuracy/")}
    Deck(f"Evaluation, epoch {epoch}", deck_html([metrics], per_benchmark))
    out = to_sd(results, schemas.EVAL_RESULTS, provenance(cfg, "evaluate", ("eval",), epoch=str(epoch)))
    return out, json.dumps(metrics)
