"""Colocated rollout engines of the segment: the trainer-to-checkpoint weight names
(checked against what save_pretrained writes for the real tiny model) and the vLLM
sleep/wake/load_weights call sequence (with a fake engine: vLLM cannot run here)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from spark_core.config import SparkConfig
from spark_core.model.token_ids import TokenIds
from spark_core.model.tokenizer import build_compact_tokenizer
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.colocated import ColocatedVLLM, hf_weight_name

IM_END = TokenIds.from_tokenizer(build_compact_tokenizer()).im_end  # the tiny checkpoint's turn terminator


def test_weight_names_match_the_checkpoint(tiny_dir):
    from safetensors import safe_open

    from spark_core.model.loading import load_model

    model = load_model(tiny_dir, SparkConfig().model, device="cpu")
    with safe_open(os.path.join(tiny_dir, "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    names = [n for n, _ in model.named_parameters()]
    # as DeepSpeed (module.), torch.compile (_orig_mod.) and activation checkpointing wrap them
    wrapped = ["module." + n.replace(".layers.0.", ".layers.0._checkpoint_wrapped_module.") for n in names]
    wrapped = [("module._orig_mod." + w[len("module."):]) if i % 2 else w for i, w in enumerate(wrapped)]
    mapped = [hf_weight_name(w) for w in wrapped]
    assert len(set(mapped)) == len(names)
    # exactly the names save_pretrained wrote (lm_head is absent when tied to the embeddings)
    assert set(mapped) - {"lm_head.weight"} == saved - {"lm_head.weight"}
    assert hf_weight_name("module.model.language_model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj.weight"
    assert hf_weight_name("model.visual.merger.mlp.0.weight") == "visual.merger.mlp.0.weight"


# the names vLLM's Qwen2.5-VL model gives the parameters of the checkpoint names below
_VLLM_NAMES = {"model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
               "visual.blocks.0.attn.qkv.weight": "visual.blocks.0.attn.qkv.weight",
               "lm_head.weight": "language_model.lm_head.weight"}


class FakeModel(torch.nn.Module):
    """The engine's model: its parameters under vLLM's names; load_weights maps the
    checkpoint names, consumes the stream and returns the set of names it loaded."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm
        self.params = torch.nn.ParameterDict({n.replace(".", "__"): torch.nn.Parameter(torch.ones(1))
                                              for n in _VLLM_NAMES.values()})

    def named_parameters(self, *args, **kwargs):
        for key, p in self.params.items():
            yield key.replace("__", "."), p

    def load_weights(self, weights):
        self.llm.calls.append("load_weights")
        self.llm.grad_enabled_in_load.append(torch.is_grad_enabled())
        loaded = set()
        for name, tensor in weights:  # consumes the generator, as vLLM does
            self.llm.loaded.append(name)
            target = _VLLM_NAMES[name]
            self.params[target.replace(".", "__")].copy_(tensor)  # raises under autograd: a leaf that requires grad
            loaded.add(target)
        return loaded


class FakeLLM:
    """Records sleep/wake/load/cache/generate calls in order, like vLLM's LLM surface."""

    def __init__(self, calls, **kwargs):
        self.kwargs, self.calls, self.loaded, self.grad_enabled_in_load = kwargs, calls, [], []
        self.calls.append("LLM()")
        self.model = FakeModel(self)
        self.llm_engine = SimpleNamespace(reset_encoder_cache=lambda: self.calls.append("reset_encoder_cache"))

    def apply_model(self, fn):
        self.calls.append("apply_model")
        return [fn(self.model)]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")
        return True

    def sleep(self, level=1):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append("generate")
        outs = []
        for p in params:
            comps = [SimpleNamespace(index=k, token_ids=[11, IM_END], text="\\boxed{1}", finish_reason="stop",
                                     logprobs=[{11: -0.5}, {IM_END: -0.1}]) for k in range(p["n"])]
            outs.append(SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=comps))
        return outs


class FakeTrainer:
    def __init__(self):
        self.names = ["module.model.language_model.embed_tokens.weight",
                      "module.model.visual.blocks.0._checkpoint_wrapped_module.attn.qkv.weight", "module.lm_head.weight"]
        self.iterated = 0

    def full_state_dict_iter(self):
        for n in self.names:
            self.iterated += 1
            yield n, torch.zeros(1)


@pytest.fixture
def engine_calls(monkeypatch):
    """One ordered record of the fake engine's calls and of the memory releases."""
    from spark_core.rollout import colocated

    calls = []
    monkeypatch.setattr(colocated.gc, "collect", lambda: calls.append("gc.collect") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    return calls


def _engine(tiny_dir, calls, cfg=None):
    cfg = cfg or SparkConfig()
    made = {}

    def factory(**kw):
        made["llm"] = FakeLLM(calls, **kw)
        return made["llm"]

    eng = ColocatedVLLM(tiny_dir, cfg.model, cfg.rollout, llm_factory=factory, sampling_params=lambda **kw: kw)
    return eng, made["llm"]


FREE = ["gc.collect", "empty_cache"]
LOAD = ["apply_model", "load_weights"]
RESET = ["reset_prefix_cache", "reset_encoder_cache"]


def test_vllm_sleep_wake_and_weight_sync(tiny_dir, engine_calls):
    from spark_core.data import generate

    cfg = SparkConfig()
    cfg.rollout.gpu_memory_utilization, cfg.rollout.colocated_gpu_memory_utilization = 0.85, 0.4
    eng, llm = _engine(tiny_dir, engine_calls, cfg)
    assert llm.kwargs["enable_sleep_mode"] is True and llm.kwargs["model"] == tiny_dir
    # the engine's own budget, not a rollout pod's; no multimodal processor cache
    assert llm.kwargs["gpu_memory_utilization"] == 0.4 and llm.kwargs["mm_processor_cache_gb"] == 0
    assert engine_calls == FREE + ["LLM()"]  # cached memory returned before vLLM measures it
    trainer = FakeTrainer()
    eng.release()  # before the first update: weights offloaded, KV cache dropped
    eng.release()  # idempotent
    rows = generate(2, seed=1)
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate(rows, SamplingSpec(n=2))
    eng.sync(trainer)
    assert engine_calls[3:] == ["sleep(1)"] + FREE + ["wake_up(weights)"] + LOAD + FREE + ["wake_up(kv_cache)"] + RESET
    assert llm.loaded == ["model.embed_tokens.weight", "visual.blocks.0.attn.qkv.weight", "lm_head.weight"]
    assert llm.grad_enabled_in_load == [False]
    assert all(float(p.detach()) == 0.0 for _, p in llm.model.named_parameters())  # the trainer's zeros went in
    assert eng.synced_tensors == trainer.iterated == 3
    samples = eng.generate(rows, SamplingSpec(n=2, seed=4))
    assert len(samples) == 4 and samples[0].response_token_ids[-1] == IM_END
    assert all(s.finish_reason == "stop" for s in samples)
    # awake engine: a sync reloads the weights without waking anything, then resets the caches
    eng.sync(trainer)
    assert engine_calls[-5:] == ["generate"] + LOAD + RESET
    eng.release()
    assert engine_calls[-1] == "sleep(1)"  # level 1 every time: level 2 would discard the weights
    json.dumps(llm.kwargs["mm_processor_kwargs"])  # plain values, as vLLM's engine args need


def test_vllm_sync_refuses_a_partial_weight_load(tiny_dir, engine_calls):
    eng, llm = _engine(tiny_dir, engine_calls)
    trainer = FakeTrainer()
    trainer.names = trainer.names[:2]  # the LM head never arrives
    with pytest.raises(RuntimeError, match=r"1 of the vLLM model's 3 parameters.*language_model\.lm_head\.weight"):
        eng.sync(trainer)
    assert "reset_prefix_cache" not in engine_calls  # nothing generates from a half-updated engine


def test_vllm_sync_without_apply_model_reaches_the_worker_model(tiny_dir, engine_calls):
    """Older engines without LLM.apply_model: the model is reached through the in-process executor."""
    eng, llm = _engine(tiny_dir, engine_calls)
    model = llm.model
    runner = SimpleNamespace(model=model)
    llm.llm_engine.model_executor = SimpleNamespace(driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner)))
    llm.apply_model = None
    eng.sync(FakeTrainer())
    assert "apply_model" not in engine_calls and engine_calls.count("load_weights") == 1
    assert llm.grad_enabled_in_load == [False]
