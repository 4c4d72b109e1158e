"""The rollout backend interface: prompts in, G sampled answers with log-probs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from spark_core.model.token_ids import NEVER_SAMPLE_TOKENS, TokenIds  # noqa: F401 (NEVER_SAMPLE_TOKENS: backends' API)


@dataclass
class SamplingSpec:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sampling_knobs(spec: SamplingSpec, ids: TokenIds) -> dict[str, Any]:
    """Every knob that shapes the sampling distribution, set explicitly.

    Both backends are built from this one dict, and nothing is taken from a checkpoint's
    `generation_config.json` (Qwen2.5-VL-Instruct ships repetition_penalty=1.05, top_k=1,
    top_p=0.001): an inherited knob would make rollouts off-policy for the trainer, which
    scores responses with the plain temperature-scaled softmax, and would make the two
    backends disagree. Greedy decoding ignores temperature, top-p and top-k. `ids` are the
    checkpoint's special token ids (the vision tokens are never sampled).
    """
    greedy = spec.greedy
    return {
        "greedy": greedy,
        "temperature": 1.0 if greedy else float(spec.temperature),
        "top_p": 1.0 if greedy else float(spec.top_p),
        "top_k": 0,  # off
        "min_p": 0.0,  # off
        "repetition_penalty": 1.0,  # off
        "presence_penalty": 0.0,  # off (vLLM only; transformers has no such knob)
        "frequency_penalty": 0.0,  # off (vLLM only)
        "max_new_tokens": int(spec.max_new_tokens),
        "min_new_tokens": 0,
        "never_sample_ids": list(ids.never_sample),
        "stop_ids": list(ids.stops),
    }


@dataclass
class Sample:
    """One generated answer. Token ids exclude the prompt; logprobs align with them."""

    prompt_id: str
    sample_index: int
    response: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" or "length"


class RolloutBackend(Protocol):
    """A backend generates `spec.n` samples for each prompt row (PROMPTS schema dicts).

    Samples come back prompt-major: all n samples of prompt 0, then prompt 1, ...
    """

    def generate(self, prompts: list[dict], spec: SamplingSpec) -> list[Sample]: ...


def make_backend(name: str, model_dir: str, model_cfg, rollout_cfg=None) -> RolloutBackend:
    """Pick a backend by configuration; the vLLM one is imported only when asked for.

    rollout_cfg (a RolloutConfig) carries the vLLM engine settings: tensor parallel
    size and the share of GPU memory the engine may take. Without it the engine uses
    the backend's own defaults. The hf backend has no engine settings.
    """
    if name == "hf":
        from spark_core.rollout.hf import HFBackend

        return HFBackend(model_dir, model_cfg)
    if name == "vllm":
        from spark_core.rollout.vllm_backend import VLLMBackend

        engine = {}
        if rollout_cfg is not None:
            engine = {"tensor_parallel_size": rollout_cfg.tensor_parallel_size,
                      "gpu_memory_utilization": rollout_cfg.gpu_memory_utilization}
        return VLLMBackend(model_dir, model_cfg, **engine)
    raise ValueError(f"unknown rollout backend {name!r}; choose 'hf' or 'vllm'")


def rollout_rows(cfg, backend, prompts: list[dict], tag: str, seed: int, desc: str = "") -> list[dict]:
    """G samples per prompt as ROLLOUTS rows (rollout ids carry the tag: "e3-policy")."""
    if not prompts:
        return []
    r = cfg.rollout
    spec = SamplingSpec(n=r.n_samples, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                        seed=seed)
    samples = backend.generate(prompts, spec, desc=desc or f"rollout[{tag}]")
    kinds = {row["prompt_id"]: (row["kind"], row["answer"]) for row in prompts}
    return [
        {"prompt_id": s.prompt_id, "rollout_id": f"{s.prompt_id}#{tag}.{s.sample_index}", "kind": kinds[s.prompt_id][0],
         "sample_index": s.sample_index, "answer": kinds[s.prompt_id][1], "response": s.response,
         "prompt_token_ids": s.prompt_token_ids, "response_token_ids": s.response_token_ids,
         "old_logprobs": s.logprobs, "finish_reason": s.finish_reason}
        for s in samples
    ]


def shard_seed(seed: int, shard: int) -> int:
    """The sampling seed of one rollout shard (the segment rolls out as shard 0)."""
    return seed * 1000 + shard
