"""Token-budget and padding-free (packed) micro-batches give the padded, fixed-size
micro-batches' log-probs, loss and gradient.

Packing concatenates a micro-batch's sequences into one row; attention stays within each
sequence (transformers builds the block-diagonal mask from where the text positions
restart) and each sequence keeps the M-RoPE positions it has alone. A token budget cuts
each optimizer step into micro-batches of similar length; since the loss is normalised
by the step's token count, the step's gradient does not depend on the cut.
"""

from __future__ import annotations

import pytest
import torch

from spark_core.config import ModelConfig, SparkConfig
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import ResponseLogprobs, _logprobs_from_hidden, build_batch
from spark_core.model.packing import check_packed_attention, pack
from spark_core.train.engine import GRPOTrainer, _plan_steps
from spark_core.train.grpo import grpo_loss
from tests.helpers import first_step_gradient, scored_rollouts

LENGTHS = [6, 1, 4, 2]  # response tokens kept per sample: unequal, so padding differs


@pytest.fixture(scope="module")
def rollouts(tiny_dir):
    rows, scored = scored_rollouts(tiny_dir, 2, data_seed=11, sample_seed=2)
    for s, n in zip(scored, LENGTHS):
        s["response_token_ids"], s["old_logprobs"] = s["response_token_ids"][:n], s["old_logprobs"][:n]
    return rows, scored


def _batch(tiny_dir, rows, scored):
    by_id = {r["prompt_id"]: r for r in rows}
    return build_batch(load_processor(tiny_dir, ModelConfig()), [by_id[s["prompt_id"]] for s in scored],
                       [s["prompt_token_ids"] for s in scored], [s["response_token_ids"] for s in scored])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_padded(tiny_dir, rollouts, attn):
    batch = _batch(tiny_dir, *rollouts)
    assert batch.pixel_values is not None  # images in the rows: M-RoPE and vision features in play
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # the padded rows really are padded
    model = load_model(tiny_dir, ModelConfig(attn_implementation=attn))
    with torch.no_grad():
        padded = ResponseLogprobs(model)(**batch.forward_inputs())
        packed = ResponseLogprobs(model, packed=True)(**batch.forward_inputs())
    mask = batch.response_mask.bool()
    assert torch.allclose(packed, padded, atol=1e-5, rtol=0), (packed - padded).abs().max()
    assert not packed[~mask].any()  # zeros outside the responses, as padded

    # the packed row needs both: sequences kept apart, and M-RoPE positions as if alone
    inner = model.model
    kwargs, flat = pack(batch, inner)
    T = flat.input_ids.shape[1]
    assert T == int(batch.attention_mask.sum()) < batch.input_ids.numel()
    one_seq = kwargs["position_ids"].clone()
    one_seq[0] = torch.arange(T)  # text positions that never restart: one long sequence
    text_rope = kwargs["position_ids"][:1].expand(4, -1, -1)  # plain positions instead of M-RoPE
    head = ResponseLogprobs(model).head
    with torch.no_grad():
        for pos in (one_seq, text_rope):
            h = inner(**dict(kwargs, position_ids=pos), use_cache=False).last_hidden_state
            wrong = _logprobs_from_hidden(h, head, flat, 1.0)[flat.response_mask.bool()]
            assert (wrong - padded[mask]).abs().max() > 1e-3


def test_packed_loss_and_gradient_equal_padded(tiny_dir, rollouts):
    """Same loss and same gradient of every parameter (fp32, no DeepSpeed)."""
    rows, scored = rollouts
    batch = _batch(tiny_dir, rows, scored)
    model = load_model(tiny_dir, ModelConfig())
    adv = torch.tensor([1.0, -1.0, -0.5, 0.5])
    results = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        logp = ResponseLogprobs(model, packed=packed)(**batch.forward_inputs())
        old = (logp.detach() - 0.05) * batch.response_mask  # ratio != 1: clipping and its gradient in play
        loss, _ = grpo_loss(logp, old, None, adv, batch.response_mask, 0.2, 0.0, denom=float(sum(LENGTHS)))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l_pad, g_pad), (l_pack, g_pack) = results
    assert l_pack == pytest.approx(l_pad, abs=1e-6)
    assert g_pad.keys() == g_pack.keys() and len(g_pad) > 10
    assert any(g.abs().max() > 0 for n, g in g_pad.items() if "visual" in n)  # the vision tower learns too
    for n in g_pad:
        err = float((g_pack[n] - g_pad[n]).norm())
        assert err <= 1e-4 * float(g_pad[n].norm()) + 1e-8, (n, err, float(g_pad[n].norm()))


def test_packing_is_refused_where_the_backend_would_mix_sequences(tiny_dir):
    with pytest.raises(ValueError, match="train.packed"):
        check_packed_attention("flex_attention")
    model = load_model(tiny_dir, ModelConfig())
    model.config._attn_implementation = "paged|sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        ResponseLogprobs(model, packed=True)


# ---- the token-budget plan ---------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_token_budget_plan(world, packed):
    import random

    rng = random.Random(world)
    n, micro, ga, budget = 50, 2, 4, 300
    per_step = micro * ga * world
    lengths = [rng.randint(20, 200) for _ in range(n)] + [400]  # one longer than the budget
    n += 1
    plan = _plan_steps(n, micro, ga, world, lengths=lengths, token_budget=budget, packed=packed)
    assert plan == _plan_steps(n, micro, ga, world, lengths=lengths, token_budget=budget, packed=packed)
    assert len(plan) == len(_plan_steps(n, micro, ga, world))  # the schedule's step count holds
    for k, step in enumerate(plan):
        assert len({len(share) for share in step}) == 1  # lockstep: as many micro-batches on every rank
        got = sorted(i for share in step for m in share for i in m)
        assert got == list(range(k * per_step, min(n, (k + 1) * per_step)))  # each sample once, in its step
        for share in step:
            for m in share:
                if len(m) > 1:
                    cost = sum(lengths[i] for i in m) if packed else len(m) * max(lengths[i] for i in m)
                    assert cost <= budget
    assert [n - 1] in [m for step in plan for share in step for m in share]  # the long one alone
    # padded: runs of similar length need far fewer padded tokens than fixed groups
    if not packed:
        fixed = _plan_steps(n, micro, ga, world)
        pad = lambda p: sum(len(m) * max(lengths[i] for i in m) for s in p for sh in s for m in sh if m)  # noqa: E731
        assert pad(plan) < pad(fixed)


# ---- the trainer: one optimizer step cut by tokens, padded or packed ----------------------


def _step_gradient(tiny_dir, rows, scored, **train) -> dict[str, torch.Tensor]:
    cfg = SparkConfig()
    cfg.train.train_batch_size, cfg.train.micro_batch_size, cfg.train.kl_coef = 4, 4, 0.0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return first_step_gradient(GRPOTrainer(cfg, tiny_dir, tiny_dir), rows, scored)


def test_token_budget_and_packing_keep_the_step_gradient(tiny_dir, rollouts):
    rows, scored = rollouts
    lengths = [len(s["prompt_token_ids"]) + len(s["response_token_ids"]) for s in scored]
    budget = max(lengths) + min(lengths)  # a step of 4 becomes 2-3 micro-batches, not the config's 1
    for packed in (False, True):
        plan = _plan_steps(4, 4, 1, 1, lengths=lengths, token_budget=budget, packed=packed)
        assert len(plan) == 1 and len(plan[0][0]) > 1
    fixed = _step_gradient(tiny_dir, rows, scored)  # one padded micro-batch of 4
    by_tokens = _step_gradient(tiny_dir, rows, scored, micro_batch_tokens=budget)
    packed = _step_gradient(tiny_dir, rows, scored, micro_batch_tokens=budget, packed=True)
    assert fixed.keys() == by_tokens.keys() == packed.keys() and fixed
    assert sum(1 for g in fixed.values() if g.abs().max() > 0) > len(fixed) // 2  # a real gradient
    for got in (by_tokens, packed):
        for k in fixed:  # equal up to float32 summation order
            err = float((got[k] - fixed[k]).norm())
            assert err <= 1e-4 * float(fixed[k].norm()) + 1e-9, (k, err, float(fixed[k].norm()))


def test_a_token_budget_pass_resumes_to_the_same_weights(tiny_dir, rollouts, tmp_path, monkeypatch):
    """Crash after step 1 of 2 and resume in the same pod: the plan is rebuilt the same,
    so the resumed pass ends with the uninterrupted pass's weights, bit for bit."""
    from spark_core.checkpoint import Checkpoints
    from spark_core.train.callbacks import CRASH_AFTER_STEP_ENV
    from spark_core.train.engine import run_update
    from tests.helpers import safetensors_weights

    rows, scored = rollouts
    cfg = SparkConfig()
    cfg.train.train_batch_size, cfg.train.micro_batch_size, cfg.train.lr = 2, 2, 5e-3
    cfg.train.micro_batch_tokens, cfg.train.packed = 1, True  # every sample a micro-batch of its own

    def update(name: str, checkpoints=None):
        return run_update(cfg=cfg, model_dir=tiny_dir, ref_dir=tiny_dir, prompts=rows, scored=scored,
                          out_dir=str(tmp_path / name / "out"), state_in=None, state_out=str(tmp_path / name / "state"),
                          phase="policy", checkpoints=checkpoints)

    full = update("full")
    monkeypatch.setenv(CRASH_AFTER_STEP_ENV, "1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        update("crashed", Checkpoints(str(tmp_path / "pod"), every=1))
    monkeypatch.delenv(CRASH_AFTER_STEP_ENV)
    resumed = update("resumed", Checkpoints(str(tmp_path / "pod"), every=1))
    assert full["steps"] == resumed["steps"] == 2 and resumed["resumed_steps"] == 1
    w_full = safetensors_weights(str(tmp_path / "full" / "out"))
    w_resumed = safetensors_weights(str(tmp_path / "resumed" / "out"))
    assert any(not torch.equal(w_full[k], v) for k, v in safetensors_weights(tiny_dir).items())
    for k in w_full:
        assert torch.equal(w_resumed[k], w_full[k]), k
