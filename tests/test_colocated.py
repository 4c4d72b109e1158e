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
from spark_core.rollout.base import SamplingSpec
from spark_core.rollout.colocated import ColocatedVLLM, hf_weight_name


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


class FakeLLM:
    """Records sleep/wake/load/generate calls in order, like vLLM's LLM surface."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], []
        model = SimpleNamespace(load_weights=self._load_weights)
        runner = SimpleNamespace(model=model)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner))))

    def _load_weights(self, weights):
        self.calls.append("load_weights")
        self.loaded.extend(name for name, _ in weights)  # consumes the generator, as vLLM does

    def sleep(self, level=1):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append("generate")
        outs = []
        for p in params:
            comps = [SimpleNamespace(index=k, token_ids=[11, 151645], text="\\boxed{1}", finish_reason="stop",
                                     logprobs=[{11: -0.5}, {151645: -0.1}]) for k in range(p["n"])]
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


def test_vllm_sleep_wake_and_weight_sync(tiny_dir):
    from spark_core.data import generate

    cfg = SparkConfig()
    made = {}

    def factory(**kw):
        made["llm"] = FakeLLM(**kw)
        return made["llm"]

    eng = ColocatedVLLM(tiny_dir, cfg.model, cfg.rollout, llm_factory=factory, sampling_params=lambda **kw: kw)
    llm = made["llm"]
    assert llm.kwargs["enable_sleep_mode"] is True and llm.kwargs["model"] == tiny_dir
    trainer = FakeTrainer()
    eng.release()  # before the first update: weights offloaded, KV cache dropped
    eng.release()  # idempotent
    rows = generate(2, seed=1)
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate(rows, SamplingSpec(n=2))
    eng.sync(trainer)
    assert llm.calls == ["sleep(1)", "wake_up(weights)", "load_weights", "wake_up(kv_cache)"]
    assert llm.loaded == ["model.embed_tokens.weight", "visual.blocks.0.attn.qkv.weight", "lm_head.weight"]
    assert eng.synced_tensors == trainer.iterated == 3
    samples = eng.generate(rows, SamplingSpec(n=2, seed=4))
    assert len(samples) == 4 and samples[0].response_token_ids[-1] == 151645
    # awake engine: a sync reloads the weights without waking anything
    eng.sync(trainer)
    assert llm.calls[-2:] == ["generate", "load_weights"]
    json.dumps(llm.kwargs["mm_processor_kwargs"])  # plain values, as vLLM's engine args need
