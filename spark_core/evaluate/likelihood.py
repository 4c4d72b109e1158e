"""How likely the model is to write the true answer: a smooth measure of learning.

Greedy accuracy moves only when the top answer to a problem changes. On the tiny
default it swings by several points under a single update and hides small steps in
either direction. The probability of the exact target `\\boxed{answer}<|im_end|>` after
the solve prompt, by teacher forcing, moves with every change of the weights and has no
sampling noise, so an epoch that moved the policy toward (or away from) the true
answers shows even where no argmax flipped.

The evaluation applies it to the held-out problems (`eval/answer_prob`) and, with the
judge prompt's label as the answer, to the judge set (`eval/judge_answer_prob`: the
right verdict's probability), over the first `eval.answer_likelihood_problems` of each.

It is meaningful where the model answers with a bare boxed answer, as the embedded
default's warm start teaches it to. A model that reasons before answering puts little
probability on answering at once, so the GPU presets leave it off
(`eval.answer_likelihood_problems = 0`).
"""

from __future__ import annotations

import math


def answer_logprobs(model, processor, pairs: list[tuple[dict, str]], batch_size: int = 32) -> list[float]:
    """log p(\\boxed{answer}<|im_end|> | the row's solve prompt) for each (row, answer) pair."""
    import torch

    from spark_core.model.logprobs import build_batch, response_logprobs
    from spark_core.model.prompting import encode_example

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i: i + batch_size]
            enc = [encode_example(processor, row, f"\\boxed{{{answer}}}") for row, answer in chunk]
            batch = build_batch(processor, [row for row, _ in chunk], [e[0] for e in enc], [e[1] for e in enc])
            batch = batch.to(device)
            with torch.no_grad():
                lp = response_logprobs(model, batch)
            out.extend((lp.float() * batch.response_mask).sum(-1).tolist())
    finally:
        model.train(was_training)
    return out


def true_answer_metrics(model, processor, rows: list[dict], batch_size: int = 32) -> dict[str, float]:
    """Mean probability and mean log-probability of each row's true answer.

    `answer_prob` is dominated by the problems the model nearly knows, `answer_logprob`
    by the ones it is furthest from; both are over the same rows.
    """
    if not rows:
        return {}
    lps = answer_logprobs(model, processor, [(r, r["answer"]) for r in rows], batch_size)
    return {"answer_prob": sum(math.exp(v) for v in lps) / len(lps), "answer_logprob": sum(lps) / len(lps)}
