"""Bootstrap: a short supervised warm start on worked solutions.

A tiny model from random weights solves nothing, so RL would see only zero rewards.
This stage plays the part of instruction tuning for the embedded default: it teaches
the answer format (reasoning, then \\boxed{}) and the judge format, to a modest
accuracy that RL can then improve.
"""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from spark_core.config import SparkConfig
from spark_core.model.loading import load_model, load_processor, save_checkpoint
from spark_core.model.logprobs import build_batch, response_logprobs
from spark_core.model.prompting import encode_example
from spark_core.train.grpo import masked_mean


def judge_target(verdict: str, truth: str, brief: bool, mode: str = "verdict", shown: list[str] = ()) -> str:
    """A judge example's target (`bootstrap.judge_target`): the verdict in \\boxed{};
    answer_then_verdict: after the problem's own answer; compare: after the own answer
    and the answers shown, so that the verdict only compares neighbouring tokens
    ("7 | 5 \\boxed{No}", pairwise "7 | A 5 B 7 \\boxed{B}"). The answers are not boxed:
    the verifier reads the last box."""
    boxed = f"\\boxed{{{verdict}}}" if brief else f"The verdict is \\boxed{{{verdict}}}."
    if mode == "answer_then_verdict":
        return f"{truth} {boxed}"
    if mode == "compare":
        shown_text = shown[0] if len(shown) == 1 else " ".join(f"{k} {a}" for k, a in zip("AB", shown))
        return f"{truth} | {shown_text} {boxed}"
    return boxed


def judge_examples(rows: list[dict], n: int, rng: random.Random, brief: bool = False,
                   mode: str = "verdict") -> list[tuple[dict, str]]:
    """Judge-format examples with correct verdicts, built with the recycling templates."""
    out = []
    if n <= 0:
        return out
    from spark_core.recycle.build import judge_samples_for_bootstrap

    picked = [rng.choice(rows) for _ in range(n)]
    for (sample, verdict, shown), src in zip(judge_samples_for_bootstrap(picked, rng), picked):
        out.append((sample, judge_target(verdict, str(src["answer"]).strip(), brief, mode, shown)))
    return out


def reflection_examples(rows: list[dict], n: int, rng: random.Random, brief: bool = False) -> list[tuple[dict, str]]:
    """Reflection-format examples (a wrong earlier answer shown, the true answer as target)."""
    if n <= 0:
        return []
    from spark_core.data import worked_solution
    from spark_core.recycle.build import reflection_samples_for_bootstrap

    picked = [rng.choice(rows) for _ in range(n)]
    return [(sample, worked_solution(src, brief=brief))
            for (sample, _), src in zip(reflection_samples_for_bootstrap(picked, rng), picked)]


def bootstrap_examples(rows: list[dict], cfg: SparkConfig, n: int, seed: int) -> list[tuple[dict, str]]:
    from spark_core.data import worked_solution

    rng = random.Random(seed)
    n_judge = int(round(n * cfg.bootstrap.judge_fraction))
    n_reflect = int(round(n * cfg.bootstrap.reflection_fraction))
    brief = cfg.bootstrap.brief_targets
    solve = [(r, worked_solution(r, brief=brief)) for r in (rng.choice(rows) for _ in range(n - n_judge - n_reflect))]
    ex = solve + judge_examples(rows, n_judge, rng, brief=brief, mode=cfg.bootstrap.judge_target)
    ex += reflection_examples(rows, n_reflect, rng, brief=brief)
    rng.shuffle(ex)
    return ex


def sft_step(model, processor, chunk: list[tuple[dict, list[int], list[int]]], opt) -> float:
    """One supervised step on (row, prompt ids, target ids) examples: the mean
    log-likelihood of the target tokens, gradient norm clipped at 1. Returns the loss."""
    batch = build_batch(processor, [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk])
    loss = -masked_mean(response_logprobs(model, batch), batch.response_mask)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def run_bootstrap(cfg: SparkConfig, model_dir: str, rows: list[dict], out_dir: str, optimizer_out: str = "") -> dict:
    """Warm-start the model in `model_dir` and save it to `out_dir`; `optimizer_out`, if
    given, also gets the AdamW state (torch.save), for experiments that continue it."""
    t0 = time.time()
    b = cfg.bootstrap
    torch.manual_seed(cfg.seed)
    processor = load_processor(model_dir, cfg.model)
    model = load_model(model_dir, cfg.model, for_training=True)
    examples = bootstrap_examples(rows, cfg, b.steps * b.batch_size, cfg.seed)
    encoded = [(row, *encode_example(processor, row, tgt)) for row, tgt in tqdm(examples, desc="bootstrap:encode")]
    opt = torch.optim.AdamW(model.parameters(), lr=b.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / b.steps))
    losses = []
    bar = tqdm(range(b.steps), desc="bootstrap:sft")
    for step in bar:
        losses.append(sft_step(model, processor, encoded[step * b.batch_size : (step + 1) * b.batch_size], opt))
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    save_checkpoint(model, processor, out_dir)
    if optimizer_out:
        torch.save(opt.state_dict(), optimizer_out)
    return {"bootstrap_loss_first": losses[0], "bootstrap_loss_last": sum(losses[-10:]) / len(losses[-10:]),
            "bootstrap_steps": b.steps, "bootstrap_seconds": time.time() - t0}
