"""Sampling settings never come from a checkpoint's generation_config.json (issue 9, finding 7).

Qwen2.5-VL-Instruct ships repetition_penalty=1.05, top_k=1, top_p=0.001. transformers fills
every knob the caller leaves unset from that file, which made hf rollouts off-policy (the
trainer scores the plain temperature-1 softmax) and greedy evaluation differ from vLLM.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from spark_core.config import ModelConfig
from spark_core.data import generate
from spark_core.model.loading import load_model, load_processor
from spark_core.model.prompting import processor_inputs
from spark_core.model.token_ids import TokenIds
from spark_core.model.tokenizer import build_compact_tokenizer
from spark_core.rollout.base import SamplingSpec, sampling_knobs
from spark_core.rollout.hf import HFBackend, generation_config

IDS = TokenIds.from_tokenizer(build_compact_tokenizer())  # the tiny default's (and `tiny_dir`'s) ids
STOP_IDS, NEVER_SAMPLE_IDS = IDS.stops, IDS.never_sample

INSTRUCT_LIKE = {"repetition_penalty": 1.05, "top_k": 1, "top_p": 0.001, "temperature": 0.01, "do_sample": True}


def _with_generation_config(tiny_dir, out, values):
    if not os.path.exists(out):
        shutil.copytree(tiny_dir, out)
    path = os.path.join(out, "generation_config.json")
    gc = json.load(open(path))
    gc.update(values)
    json.dump(gc, open(path, "w"))
    return out


@pytest.fixture(scope="module")
def instruct_dir(tiny_dir, tmp_path_factory):
    return _with_generation_config(tiny_dir, str(tmp_path_factory.mktemp("gc") / "model"), INSTRUCT_LIKE)


@pytest.fixture(scope="module")
def strong_penalty_dir(tiny_dir, tmp_path_factory):
    # an exaggerated penalty, large enough to change the tiny model's greedy output
    return _with_generation_config(tiny_dir, str(tmp_path_factory.mktemp("gc10") / "model"),
                                   {"repetition_penalty": 10.0})


@pytest.fixture(scope="module")
def rows():
    return generate(3, seed=0)


def _tokens(samples):
    return [s.response_token_ids for s in samples]


def test_checkpoint_config_is_really_loaded(instruct_dir):
    # the checkpoint's values reach the model; what matters is that generation ignores them
    model = load_model(instruct_dir, ModelConfig())
    assert model.generation_config.repetition_penalty == 1.05 and model.generation_config.top_k == 1


def test_sampled_rollouts_ignore_checkpoint_generation_config(tiny_dir, instruct_dir, strong_penalty_dir, rows):
    spec = SamplingSpec(n=4, temperature=1.0, max_new_tokens=10, seed=5)
    clean = HFBackend(tiny_dir, ModelConfig(), device="cpu").generate(rows, spec)
    penalised = HFBackend(strong_penalty_dir, ModelConfig(), device="cpu").generate(rows, spec)
    assert _tokens(penalised) == _tokens(clean)
    backend = HFBackend(instruct_dir, ModelConfig(), device="cpu")
    instruct = backend.generate(rows, spec)
    assert _tokens(instruct) == _tokens(clean)  # same seed, same distribution, same tokens
    # top_k=1 / top_p=0.001 would force the 4 samples of a prompt to be identical
    for i in range(len(rows)):
        group = {tuple(t) for t in _tokens(instruct)[4 * i: 4 * i + 4]}
        assert len(group) > 1
    assert [s.logprobs for s in instruct] == [s.logprobs for s in clean]
    # the checkpoint's own generation config is left as it was
    assert backend.model.generation_config.repetition_penalty == 1.05


def test_greedy_rollouts_ignore_checkpoint_repetition_penalty(tiny_dir, strong_penalty_dir, rows):
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12)
    clean = HFBackend(tiny_dir, ModelConfig(), device="cpu").generate(rows, spec)
    penalised = HFBackend(strong_penalty_dir, ModelConfig(), device="cpu")
    assert _tokens(penalised.generate(rows, spec)) == _tokens(clean)
    # control: a generate call that leaves the knob unset does pick the checkpoint's penalty up
    proc = load_processor(strong_penalty_dir, ModelConfig())
    proc.tokenizer.padding_side = "left"
    inputs = processor_inputs(proc, rows)
    with torch.no_grad():
        out = penalised.model.generate(**inputs, do_sample=False, max_new_tokens=12, eos_token_id=list(STOP_IDS),
                                       pad_token_id=STOP_IDS[1])
    inherited = out[:, inputs["input_ids"].shape[1]:].tolist()
    assert [t[: len(c)] for t, c in zip(inherited, _tokens(clean))] != _tokens(clean)


@pytest.mark.parametrize("spec", [SamplingSpec(n=4, temperature=0.8, top_p=0.9, max_new_tokens=7),
                                  SamplingSpec(n=1, temperature=0.0, max_new_tokens=5)])
def test_generation_config_sets_every_knob(spec):
    g = generation_config(spec, IDS)
    k = sampling_knobs(spec, IDS)
    assert g.do_sample is (not spec.greedy)
    assert g.max_new_tokens == spec.max_new_tokens and g.min_new_tokens == 0
    assert g.num_return_sequences == spec.n and g.num_beams == 1
    assert g.repetition_penalty == 1.0 and g.no_repeat_ngram_size == 0
    assert g.typical_p == 1.0 and g.epsilon_cutoff == 0.0 and g.eta_cutoff == 0.0 and g.min_p is None
    assert g.suppress_tokens == list(NEVER_SAMPLE_IDS)
    assert g.eos_token_id == list(STOP_IDS)
    if not spec.greedy:
        assert (g.temperature, g.top_p, g.top_k) == (k["temperature"], k["top_p"], 0) == (0.8, 0.9, 0)
