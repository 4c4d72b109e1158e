"""Rollouts with vLLM (GPU images only).

vLLM is imported inside `VLLMBackend.__init__`, so this module imports anywhere.
Everything that can be checked without a GPU (request building, sampling and engine
arguments, conversion of outputs to Samples) lives in plain functions.

Consistency with the trainer and the hf backend:
- prompts are rendered by the same `render_prompt` and chat template;
- vLLM's image processor gets the same min/max pixel limits and the same (PIL, "slow")
  image-processor backend as the trainer's processor, so a prompt expands to the same
  vision tokens with the same pixel values (vLLM asks for the torchvision "fast"
  processor by default, whose resizing differs);
- every sampling knob is set explicitly from the same `sampling_knobs` as the hf
  backend, and the engine ignores the checkpoint's generation_config.json;
- vision placeholder tokens are never sampled (`bad_words`);
- log-probs are vLLM's raw (temperature 1, before top-p) log-probs, which is what
  the trainer recomputes;
- the stop token stays at the end of the response, as in the hf backend.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

from spark_core.config import ModelConfig
from spark_core.model.loading import load_processor, pixel_limits
from spark_core.model.prompting import decode_image, render_prompt
from spark_core.model.token_ids import TokenIds
from spark_core.rollout.base import NEVER_SAMPLE_TOKENS, Sample, SamplingSpec, sampling_knobs


def build_requests(processor, rows: list[dict]) -> list[dict[str, Any]]:
    """One vLLM prompt dict per PROMPTS row, in row order.

    The text keeps the single `<|image_pad|>` placeholder from the chat template;
    vLLM expands it to the image's vision tokens itself.
    """
    requests = []
    for row in rows:
        req: dict[str, Any] = {"prompt": render_prompt(processor, row)}
        image = decode_image(row)
        if image is not None:
            req["multi_modal_data"] = {"image": image}
        requests.append(req)
    return requests


def sampling_kwargs(spec: SamplingSpec, ids: TokenIds) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`: every sampling knob named, from the same
    `sampling_knobs` as the hf backend, so nothing falls back to an engine or checkpoint default.
    `ids`: the checkpoint's special token ids (stop tokens)."""
    k = sampling_knobs(spec, ids)
    return {
        "n": spec.n,
        "temperature": 0.0 if k["greedy"] else k["temperature"],
        "top_p": k["top_p"],
        "top_k": k["top_k"],  # 0 disables top-k in vLLM 0.32 (-1 is only tolerated)
        "min_p": k["min_p"],
        "repetition_penalty": k["repetition_penalty"],
        "presence_penalty": k["presence_penalty"],
        "frequency_penalty": k["frequency_penalty"],
        "max_tokens": k["max_new_tokens"],
        "min_tokens": k["min_new_tokens"],
        "seed": spec.seed,
        # 0 = no alternatives, but vLLM always reports the sampled token's log-prob
        "logprobs": 0,
        # same stop set as the hf backend, independent of the checkpoint's generation config
        "stop_token_ids": k["stop_ids"],
        "stop": [],
        "ignore_eos": False,
        # each vision placeholder is one special token, so its "word" is that single id,
        # which vLLM masks to -inf before sampling
        "bad_words": list(NEVER_SAMPLE_TOKENS),
        "logit_bias": None,
        "allowed_token_ids": None,
        "skip_special_tokens": True,
        "detokenize": True,
    }


def request_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed: samples depend on (seed, prompt), not on batch order or sharding.

    vLLM gives the n samples of one request seeds seed, seed+1, ..., seed+n-1.
    """
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x3FFFFFFF


def engine_kwargs(model_dir: str, cfg: ModelConfig, tensor_parallel_size: int = 1,
                  gpu_memory_utilization: float = 0.5, *, seed: int = 0,
                  max_model_len: int | None = None, processor=None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`.

    The pixel limits are read back from the trainer's processor (`load_processor`),
    not copied from the config, so the two cannot drift apart.
    """
    processor = processor if processor is not None else load_processor(model_dir, cfg)
    min_pixels, max_pixels = pixel_limits(processor.image_processor)
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "tokenizer": model_dir,
        "trust_remote_code": cfg.trust_remote_code,
        "dtype": cfg.dtype,
        "limit_mm_per_prompt": {"image": 1},
        # same pixel limits and same image-processor backend (PIL, not torchvision) as the trainer
        "mm_processor_kwargs": {"min_pixels": min_pixels, "max_pixels": max_pixels,
                                "use_fast": image_processor_is_fast(processor.image_processor)},
        # sampling defaults come from vLLM itself, never from the checkpoint's generation_config.json
        # (every knob is also set per request by `sampling_kwargs`)
        "generation_config": "vllm",
        "enable_prefix_caching": True,  # the n samples of a prompt share its prefix
        "seed": seed,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "logprobs_mode": "raw_logprobs",
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    return kwargs


def image_processor_is_fast(image_processor) -> bool:
    """Whether an image processor is the torchvision ("fast") backend rather than the PIL one."""
    backend = getattr(image_processor, "backend", None)
    if isinstance(backend, str):
        return backend != "pil"
    name = type(image_processor).__name__
    return name.endswith("Fast") or "Torchvision" in name


def _logprob_value(entry) -> float:
    return float(getattr(entry, "logprob", entry))


def _sampled_logprobs(token_ids: list[int], position_logprobs) -> list[float]:
    if position_logprobs is None:
        raise ValueError("vLLM returned no logprobs; SamplingParams.logprobs must be set")
    if len(position_logprobs) < len(token_ids):
        raise ValueError(f"{len(position_logprobs)} logprob positions for {len(token_ids)} tokens")
    out = []
    for k, (tok, d) in enumerate(zip(token_ids, position_logprobs)):
        if tok not in d:
            raise ValueError(f"position {k}: no logprob for the sampled token {tok}")
        out.append(_logprob_value(d[tok]))
    return out


def _dropped_stop_token(completion, n_tokens: int, stops: tuple[int, ...]) -> tuple[int, float] | None:
    """The stop token (and its log-prob) when vLLM stopped on it but left it out of token_ids.

    Only recoverable if the engine still reported a log-prob for that position.
    """
    position_logprobs = getattr(completion, "logprobs", None)
    if position_logprobs is None or len(position_logprobs) != n_tokens + 1:
        return None
    last = position_logprobs[n_tokens]
    stop_reason = getattr(completion, "stop_reason", None)
    candidates: Iterable[int] = (stop_reason,) if isinstance(stop_reason, int) else stops
    for tok in candidates:
        if tok in last:
            return tok, _logprob_value(last[tok])
    return None


def samples_from_outputs(rows: list[dict], outputs, spec: SamplingSpec, ids: TokenIds) -> list[Sample]:
    """vLLM RequestOutputs (one per row, in row order) to prompt-major Samples.

    A response that finished on a stop token ends with that token, as in the hf backend,
    so the policy is trained to stop. vLLM 0.32 keeps the token in `token_ids`. If an
    engine drops it, it is put back only when that position's log-prob was reported:
    a stop token with an invented behaviour log-prob would bias the update more than
    a missing one.
    """
    outputs = list(outputs)
    if len(outputs) != len(rows):
        raise ValueError(f"{len(outputs)} vLLM outputs for {len(rows)} prompts")
    samples: list[Sample] = []
    for row, out in zip(rows, outputs):
        completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(completions) != spec.n:
            raise ValueError(f"prompt {row['prompt_id']}: {len(completions)} completions, expected {spec.n}")
        prompt_ids = [int(t) for t in out.prompt_token_ids]
        for k, c in enumerate(completions):
            token_ids = [int(t) for t in c.token_ids]
            logprobs = _sampled_logprobs(token_ids, c.logprobs)
            if c.finish_reason == "length":
                finish = "length"
            elif c.finish_reason == "stop":
                finish = "stop"
                if not token_ids or token_ids[-1] not in ids.stops:
                    dropped = _dropped_stop_token(c, len(token_ids), ids.stops)
                    if dropped is not None:
                        token_ids.append(dropped[0])
                        logprobs.append(dropped[1])
            else:
                raise RuntimeError(f"prompt {row['prompt_id']} sample {k}: vLLM finished with {c.finish_reason!r}")
            samples.append(
                Sample(prompt_id=row["prompt_id"], sample_index=k, response=c.text,
                       prompt_token_ids=prompt_ids, response_token_ids=token_ids, logprobs=logprobs,
                       finish_reason=finish)
            )
    return samples


class VLLMBackend:
    """RolloutBackend on a vLLM engine that lives as long as the backend."""

    def __init__(self, model_dir: str, cfg: ModelConfig, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, seed: int = 0, max_model_len: int | None = None):
        # vLLM workers must not fork a process that already initialised CUDA
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM, SamplingParams

        self.cfg = cfg
        self.processor = load_processor(model_dir, cfg)
        self.ids = TokenIds.from_tokenizer(self.processor)
        self._sampling_params = SamplingParams
        self.llm = LLM(**engine_kwargs(model_dir, cfg, tensor_parallel_size, gpu_memory_utilization, seed=seed,
                                       max_model_len=max_model_len, processor=self.processor))

    def generate(self, prompts: list[dict], spec: SamplingSpec, desc: str = "rollout") -> list[Sample]:
        if not prompts:
            return []
        from tqdm.auto import tqdm

        requests = build_requests(self.processor, prompts)
        base = sampling_kwargs(spec, self.ids)
        params = [self._sampling_params(**{**base, "seed": request_seed(spec.seed, row["prompt_id"])})
                  for row in prompts]

        def progress(**kw):
            return tqdm(**{**kw, "desc": desc})

        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        return samples_from_outputs(prompts, outputs, spec, self.ids)
