"""Vision placeholder tokens in responses (issue 9, finding 6).

A sampled <|image_pad|> / <|video_pad|> used to be read as an image slot by the log-prob
pass, which then crashed. Both backends now forbid sampling them, and the log-prob pass
treats one found in a response as ordinary text.
"""

from __future__ import annotations

import pytest
import torch

from spark_core.config import ModelConfig
from spark_core.data import generate
from spark_core.model.loading import load_model, load_processor
from spark_core.model.logprobs import build_batch, response_logprobs
from spark_core.model.prompting import processor_inputs
from spark_core.model.token_ids import TokenIds
from spark_core.model.tokenizer import build_compact_tokenizer
from spark_core.rollout.base import SamplingSpec

# the tiny default's ids (the `tiny_dir` checkpoint is built with this same tokenizer)
IDS = TokenIds.from_tokenizer(build_compact_tokenizer())
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, PAD_ID, NEVER_SAMPLE_IDS = IDS.image, IDS.video, IDS.pad, IDS.never_sample
from spark_core.rollout.hf import HFBackend


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir, ModelConfig())


@pytest.fixture(scope="module")
def rows():
    return generate(2, seed=0)


def _biased_model(tiny_dir, ids, bias: float = 40.0):
    """The tiny model with a large logit bias on `ids`: unconstrained, it samples little else."""
    model = load_model(tiny_dir, ModelConfig())
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = old.weight  # the same (tied) weights, plus a bias
    with torch.no_grad():
        head.bias.zero_()
        head.bias[list(ids)] = bias
    model.lm_head = head
    return model.eval()


def test_biased_model_samples_vision_tokens_when_unconstrained(tiny_dir, processor, rows):
    # control: the bias works, so the next test could fail
    model = _biased_model(tiny_dir, NEVER_SAMPLE_IDS)
    processor.tokenizer.padding_side = "left"
    inputs = processor_inputs(processor, rows)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, top_k=0, max_new_tokens=6, num_return_sequences=2)
    new = out[:, inputs["input_ids"].shape[1]:]
    assert sum(int(t) in NEVER_SAMPLE_IDS for t in new.flatten()) > new.numel() // 2


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_hf_backend_never_samples_vision_tokens(tiny_dir, processor, rows, temperature):
    model = _biased_model(tiny_dir, NEVER_SAMPLE_IDS)
    backend = HFBackend(tiny_dir, ModelConfig(), device="cpu", model=model, processor=processor)
    n = 4 if temperature > 0 else 1
    samples = backend.generate(rows, SamplingSpec(n=n, temperature=temperature, max_new_tokens=8, seed=1))
    assert len(samples) == n * len(rows)
    tokens = [t for s in samples for t in s.response_token_ids]
    assert len(tokens) >= len(samples)
    assert not set(tokens) & set(NEVER_SAMPLE_IDS)
    for s in samples:
        assert len(s.logprobs) == len(s.response_token_ids)
        assert all(torch.isfinite(torch.tensor(s.logprobs)))


def _stray_batch(processor, rows, tiny_model, stray_id):
    """Real rollouts of the tiny model, with a vision placeholder put into each response."""
    backend = HFBackend("", ModelConfig(), device="cpu", model=tiny_model, processor=processor)
    samples = backend.generate(rows, SamplingSpec(n=1, temperature=1.0, max_new_tokens=6, seed=2))
    prompt_ids = [s.prompt_token_ids for s in samples]
    responses = [s.response_token_ids[:2] + [stray_id] + s.response_token_ids[2:] for s in samples]
    return build_batch(processor, rows, prompt_ids, responses), prompt_ids, responses


@pytest.mark.parametrize("stray_id", [IMAGE_TOKEN_ID, VIDEO_TOKEN_ID])
def test_logprob_pass_handles_vision_token_in_response(tiny_dir, processor, rows, stray_id):
    model = load_model(tiny_dir, ModelConfig()).eval()
    batch, prompt_ids, responses = _stray_batch(processor, rows, model, stray_id)
    inputs = batch.model_inputs(model.model.get_input_embeddings())
    resp = batch.response_mask.bool()
    assert not inputs["mm_token_type_ids"][resp].any()  # image/video slots only in the prompt
    assert int((inputs["mm_token_type_ids"] == 1).sum()) == int(((batch.input_ids == IMAGE_TOKEN_ID) & ~resp).sum())
    with torch.no_grad():
        lp = response_logprobs(model, batch)
    assert torch.isfinite(lp).all()
    for i, (p, r) in enumerate(zip(prompt_ids, responses)):
        vals = lp[i, len(p): len(p) + len(r)]
        assert (vals < 0).all()
    # causal check: log-probs before the stray token equal those of the response cut just before it
    cut = build_batch(processor, rows, prompt_ids, [r[:2] for r in responses])
    with torch.no_grad():
        lp_cut = response_logprobs(model, cut)
    for i, p in enumerate(prompt_ids):
        torch.testing.assert_close(lp[i, len(p): len(p) + 2], lp_cut[i, len(p): len(p) + 2], rtol=1e-4, atol=1e-5)


def test_stray_token_keeps_its_own_embedding(tiny_dir, processor):
    # text-only prompts: the model needs no image features, so the plain forward on the raw
    # ids is the exact reference for "the placeholder read as text"
    model = load_model(tiny_dir, ModelConfig()).eval()
    tok = processor.tokenizer
    prompt = tok("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    response = tok("The answer")["input_ids"] + [IMAGE_TOKEN_ID] + tok(" is 5")["input_ids"]
    row = {"prompt_id": "t", "image": None}
    batch = build_batch(processor, [row], [prompt], [response])
    with torch.no_grad():
        ours = response_logprobs(model, batch)
        hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        ref = torch.log_softmax(model.lm_head(hidden[:, :-1]).float(), -1).gather(
            -1, batch.input_ids[:, 1:, None]).squeeze(-1)
    m = batch.response_mask[:, 1:].bool()
    torch.testing.assert_close(ours[:, 1:][m], ref[m], rtol=1e-4, atol=1e-5)
    # without the embedding module the token is fed as padding: still no crash, positions differ
    fallback = batch.model_inputs()
    assert "inputs_embeds" not in fallback
    assert int((fallback["input_ids"] == PAD_ID).sum()) == 1 + int((batch.input_ids == PAD_ID).sum())


def test_build_batch_counts_only_prompt_image_tokens(processor, rows, tiny_dir):
    model = load_model(tiny_dir, ModelConfig()).eval()
    batch, prompt_ids, _ = _stray_batch(processor, rows, model, IMAGE_TOKEN_ID)
    n_prompt = sum(p.count(IMAGE_TOKEN_ID) for p in prompt_ids)
    assert int((batch.input_ids == IMAGE_TOKEN_ID).sum()) == n_prompt + len(rows)
    # a prompt that really lacks an image token still fails loudly
    with pytest.raises(ValueError, match="image tokens"):
        short = [p[: p.index(IMAGE_TOKEN_ID)] + p[p.index(IMAGE_TOKEN_ID) + 1:] for p in prompt_ids]
        build_batch(processor, rows, short, [[1, 2]] * len(rows))
