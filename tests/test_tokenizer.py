"""The compact tokenizer of the tiny default, and ids read from the checkpoint, not a table."""

from __future__ import annotations

import dataclasses

import pytest

from spark_core.config import ModelConfig, TinyModelConfig
from spark_core.data import generate
from spark_core.model.loading import load_model, load_processor
from spark_core.model.token_ids import TokenIds, check_agree
from spark_core.model.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_compact_tokenizer, build_qwen_tokenizer


@pytest.fixture(scope="module")
def compact():
    return build_compact_tokenizer()


def test_compact_tokenizer_is_deterministic_and_sized(compact):
    again = build_compact_tokenizer()
    assert len(compact) == 1024 and compact.get_vocab() == again.get_vocab()
    assert build_compact_tokenizer(vocab_size=600).get_vocab() != compact.get_vocab()
    with pytest.raises(ValueError, match="no room"):
        build_compact_tokenizer(vocab_size=200)


def test_compact_tokenizer_keeps_qwen_special_tokens_and_template(compact):
    for t in SPECIAL_TOKENS:
        i = compact.convert_tokens_to_ids(t)
        assert i is not None and compact.convert_ids_to_tokens(i) == t
    assert compact.chat_template == CHAT_TEMPLATE == build_qwen_tokenizer().chat_template
    assert compact.eos_token == "<|im_end|>" and compact.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("text", ["héllo wörld ünïcode 世界 🙂", "\\boxed{12} 3.5e-4 x_1^2", "tabs\tand\r\nnewlines",
                                  "<|im_end|> as text", ""])
def test_any_text_round_trips_through_byte_fallback(compact, text):
    ids = compact.encode(text, add_special_tokens=False)
    assert compact.decode(ids) == text
    assert all(0 <= i < len(compact) for i in ids)


def test_digits_split_one_by_one_and_task_text_is_compact(compact):
    assert compact.convert_ids_to_tokens(compact.encode("2026", add_special_tokens=False)) == ["2", "0", "2", "6"]
    row = generate(1, seed=0)[0]
    q = compact.encode(row["question"], add_special_tokens=False)
    assert len(q) <= len(row["question"].split()) + 3  # about a token a word on the task's own text


def test_token_ids_follow_the_tokenizer(compact):
    small, qwen = TokenIds.from_tokenizer(compact), TokenIds.from_tokenizer(build_qwen_tokenizer())
    assert small.image == compact.convert_tokens_to_ids("<|image_pad|>") < 64
    assert qwen.image == 151655 and qwen.im_end == 151645
    assert small.stops == (compact.convert_tokens_to_ids("<|im_end|>"), compact.convert_tokens_to_ids("<|endoftext|>"))


def test_token_ids_are_read_once_per_tokenizer(monkeypatch):
    tok = build_compact_tokenizer()
    first = TokenIds.from_tokenizer(tok)
    reads = []
    monkeypatch.setattr(TokenIds, "_read", classmethod(lambda cls, t: reads.append(t) or first))
    assert TokenIds.from_tokenizer(tok) is first and TokenIds.from_tokenizer(_Holder(tok)) is first
    assert reads == []  # neither the tokenizer nor a processor holding it is read again
    tok.pad_token = "<|im_end|>"  # a changed pad token is read again
    TokenIds.from_tokenizer(tok)
    assert reads == [tok]


class _Holder:  # a processor: the tokenizer as its `tokenizer`
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def test_tokenizer_without_vision_tokens_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "<|im_end|>": 1}, merges=[])))
    with pytest.raises(ValueError, match="image_pad"):
        TokenIds.from_tokenizer(bare)


def test_config_and_tokenizer_that_disagree_are_refused(tiny_dir):
    proc = load_processor(tiny_dir, ModelConfig())
    model = load_model(tiny_dir, ModelConfig())
    assert check_agree(proc, model.config).image == model.config.image_token_id
    model.config.image_token_id += 1
    with pytest.raises(ValueError, match="image_token_id"):
        check_agree(proc, model.config)


@pytest.mark.parametrize("vocab", ["compact", "qwen"])
def test_rollout_and_trainer_logprobs_agree_whatever_the_ids(tmp_path, vocab):
    """The HF backend and the trainer's log-prob pass run on checkpoints whose special
    tokens sit at different ids (the compact vocabulary's first rows, Qwen's 151643+)."""
    import torch

    from spark_core.model.logprobs import ResponseLogprobs, build_batch, gather_response
    from spark_core.model.tiny import build_tiny
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    cfg = dataclasses.replace(ModelConfig(), tiny=dataclasses.replace(TinyModelConfig(), vocab=vocab, hidden_size=32,
                                                                     intermediate_size=64, num_hidden_layers=1))
    model_dir = build_tiny(str(tmp_path / vocab), cfg)
    backend = HFBackend(model_dir, cfg, device="cpu")
    ids = TokenIds.from_tokenizer(backend.processor)
    from_config = TokenIds.from_model_config(backend.model.config)
    assert (from_config.image, from_config.video, from_config.pad, from_config.im_end) == (ids.image, ids.video, ids.pad,
                                                                                           ids.im_end)
    assert (ids.image > 150_000) == (vocab == "qwen")
    rows = generate(2, seed=3)
    samples = backend.generate(rows, SamplingSpec(n=2, max_new_tokens=6, seed=1))
    assert len(samples) == 4
    for s in samples:
        assert ids.image in s.prompt_token_ids and not set(s.response_token_ids) & set(ids.never_sample)
        assert (s.finish_reason == "stop") == (s.response_token_ids[-1] in ids.stops)
    by_id = {r["prompt_id"]: r for r in rows}
    batch = build_batch(backend.processor, [by_id[s.prompt_id] for s in samples], [s.prompt_token_ids for s in samples],
                        [s.response_token_ids for s in samples])
    with torch.no_grad():
        trainer_lp = gather_response(ResponseLogprobs(backend.model)(**batch.forward_inputs()), batch)
    for s, lp in zip(samples, trainer_lp):
        assert lp == pytest.approx(s.logprobs, abs=1e-4)
