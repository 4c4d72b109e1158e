"""Small builders shared by the trainer tests (plain functions, not fixtures)."""

from __future__ import annotations

import os


def scored_rollouts(model_dir: str, n_prompts: int, data_seed: int, sample_seed: int):
    """Synthetic prompts and 2 HF rollouts each from the real model, in the shape the
    trainer reads (sample 0 of each prompt rewarded 1, sample 1 rewarded 0)."""
    from spark_core.config import SparkConfig
    from spark_core.data import generate
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    rows = generate(n_prompts, seed=data_seed)
    samples = HFBackend(model_dir, SparkConfig().model).generate(
        rows, SamplingSpec(n=2, max_new_tokens=6, seed=sample_seed))
    scored = [dict(prompt_id=s.prompt_id, prompt_token_ids=s.prompt_token_ids, response_token_ids=s.response_token_ids,
                   old_logprobs=s.logprobs, reward=float(s.sample_index == 0)) for s in samples]
    return rows, scored


def safetensors_weights(path: str):
    """The tensors of a saved checkpoint directory's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def first_step_gradient(trainer, rows: list[dict], scored: list[dict]) -> dict:
    """The full gradient of the trainer's first optimizer step on `scored`, taken just
    before the optimizer applies it (after all micro-batches and DeepSpeed's scaling).
    Gathering a ZeRO gradient is a collective: every rank must call this."""
    from deepspeed.utils import safe_get_full_grad

    opt = trainer.engine.optimizer
    real_step = opt.step
    grads: dict = {}

    def step(*a, **kw):
        if not grads:
            for name, p in trainer.module.named_parameters():
                g = safe_get_full_grad(p)
                if g is not None:
                    grads[name] = g.detach().clone().float()
        return real_step(*a, **kw)

    opt.step = step
    m = trainer.train_pass(rows, scored, "policy")
    assert m["steps"] == 1 and not m["step_log"][0]["skipped"]
    return grads


# ---- a verifier comparator that misbehaves on request (spark_core.reward.verifier.COMPARE) ----
# Workers import it by name, so it lives in a module, not in a test function.

HANG_TOKEN = "__spark_verify_hang__"
CRASH_TOKEN = "__spark_verify_crash__"


def misbehaving_math_equal(gold: str, pred: str) -> bool:
    """math_equal, except that it hangs on HANG_TOKEN and kills its process on CRASH_TOKEN."""
    import time

    from spark_core.reward.verifier import math_equal

    if HANG_TOKEN in pred:
        time.sleep(3600)
    if CRASH_TOKEN in pred:
        os._exit(3)
    return math_equal(gold, pred)


def score_into(out, responses: list[str], labels: list[str]) -> None:
    """Process target: score in that process; put its (reward, status) pairs on `out`,
    and whether it holds a worker pool of its own afterwards."""
    from spark_core.reward import score_batch, verifier

    scores = [(r["reward"], r["status"]) for r in score_batch(responses, labels)]
    out.put((scores, verifier._POOL._pool is not None))


def torch_extensions_dir() -> str:
    """Where torch keeps compiled extensions (DeepSpeed's CPU ops) for this user. Tests that
    run pyflyte with a temporary HOME pass it on, so the ops are not compiled again."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")


def config_inputs(task, cfg) -> dict:
    """The config sections a task takes (its inputs named like SparkConfig fields), from cfg."""
    import dataclasses

    from spark_core.config import SparkConfig

    fields = {f.name for f in dataclasses.fields(SparkConfig)}
    return {n: getattr(cfg, n) for n, t in task.python_interface.inputs.items()
            if n in fields and t is type(getattr(cfg, n))}  # `train` may also name a data input
