"""Rollout engines that share a process (and the GPUs) with the trainer, for segments.

Between passes the segment calls `sync(trainer)` before generating (the engine gets
the weights the trainer just updated) and `release()` before training (the engine
gives its memory back). Two engines:

- ColocatedHF: transformers `generate` on the trainer's live module (CPU, tests). The
  weights are the trainer's own, so sync only switches the module to eval mode.
- ColocatedVLLM: a vLLM engine started with `enable_sleep_mode=True`. release() is
  `llm.sleep(level=1)` (weights offloaded to CPU, KV cache dropped); sync() is
  `llm.wake_up(tags=["weights"])`, then the trainer's full weights, gathered one
  parameter at a time (`GRPOTrainer.full_state_dict_iter()`), go into the engine's
  model with its `load_weights`, then `llm.wake_up(tags=["kv_cache"])`. Waking the
  KV cache after the weights keeps peak memory at weights + one gathered tensor.
  The weights go in under their names in a saved checkpoint (`hf_weight_name`), which
  vLLM's Qwen2.5-VL `load_weights` maps to its own modules (`hf_to_vllm_mapper`).

What keeps the vLLM engine correct beside a trainer (the same steps TRL, verl and
OpenRLHF take around their colocated engines):
- its own memory budget, `rollout.colocated_gpu_memory_utilization`: the trainer is
  built first, and vLLM refuses to start unless that share of the card is still free
  (spark_core/memory_budget.py checks the arithmetic at config time);
- Python's garbage and PyTorch's cached blocks are returned (`gc.collect()`,
  `torch.cuda.empty_cache()`) before the engine is built and before every `wake_up`,
  or the trainer's cached activations leave the engine too little room;
- the weights load through `llm.apply_model` (the model inside the in-process worker)
  under `torch.no_grad()`, and the names `load_weights` reports loaded must cover every
  parameter of the engine's model: under sleep level 1 the old weights stay valid, so a
  parameter missing from the stream would silently keep its stale value;
- after a load the prefix cache (KV blocks computed with the old weights, or lost in
  the sleep) and the encoder cache (vision embeddings keyed by image hash) are reset,
  and the multimodal processor cache is off (`mm_processor_cache_gb=0`): the recycled
  pass and the evaluations send the same images again, and a processor cache that
  outlives a sleep can fail with "Expected a cached item for mm_hash";
- sleep stays at level 1 (level 2 discards the weights, which would then all have to
  come from the stream before the first wake).
"""

from __future__ import annotations

import gc
import logging
import os
import re
from typing import Any, Callable, Iterable, Iterator

from spark_core.rollout.base import Sample, SamplingSpec

log = logging.getLogger(__name__)

SLEEP_LEVEL = 1  # weights offloaded to CPU and kept, KV cache dropped

# wrappers that appear in a trained module's parameter names but not in the checkpoint
_WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)(?=\.)")


# transformers 5 names Qwen2.5-VL modules model.language_model.* / model.visual.*, but
# writes checkpoints in the original layout (model.* / visual.*), the one every vLLM
# version loads
_CHECKPOINT_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def hf_weight_name(name: str) -> str:
    """The name a trainer parameter has in a saved Hugging Face checkpoint: DeepSpeed's
    `module.`, torch.compile's `_orig_mod.` and checkpoint-wrapper segments removed, and
    the module path mapped to the checkpoint layout."""
    out = _WRAPPERS.sub("", name).lstrip(".")
    for new, old in _CHECKPOINT_PREFIXES:
        if out.startswith(new):
            return old + out[len(new):]
    return out


def hf_weights(named: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """(checkpoint name, tensor) for each trainer weight, in order."""
    for name, tensor in named:
        yield hf_weight_name(name), tensor


def free_cached_memory() -> None:
    """Return Python's garbage and PyTorch's cached CUDA blocks to the driver, so that the
    vLLM engine (which allocates outside PyTorch's cache) finds them free."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


class ColocatedHF:
    """HF generation on the trainer's module (no copy of the weights). Under ZeRO-3 the
    full weights are gathered from sync() to release() (GRPOTrainer.full_weights)."""

    def __init__(self, trainer, model_cfg, prompts_per_chunk: int = 8):
        from spark_core.rollout.hf import HFBackend

        self.trainer = trainer
        self._backend = HFBackend("", model_cfg, device=trainer.dist.device, prompts_per_chunk=prompts_per_chunk,
                                  model=trainer.module, processor=trainer.processor)
        self._weights = None  # the open full_weights() context between sync() and release()
        trainer.module.train()  # HFBackend switched it to eval; training comes first

    def sync(self, trainer) -> None:
        if self._weights is None:
            self._weights = trainer.full_weights()
            self._weights.__enter__()
        trainer.module.eval()

    def release(self) -> None:
        if self._weights is not None:
            weights, self._weights = self._weights, None
            weights.__exit__(None, None, None)
        self.trainer.module.train()

    def generate(self, prompts: list[dict], spec: SamplingSpec, desc: str = "rollout") -> list[Sample]:
        return self._backend.generate(prompts, spec, desc=desc)

    @property
    def model(self):
        """The trainer's module (full weights only between sync() and release())."""
        return self._backend.model

    @property
    def processor(self):
        return self._backend.processor


class ColocatedVLLM:
    """A sleep-mode vLLM engine in the trainer's process, woken with fresh weights.

    `llm_factory` and `sampling_params` default to vllm.LLM and vllm.SamplingParams;
    tests pass fakes that record the calls."""

    def __init__(self, model_dir: str, model_cfg, rollout_cfg, *, seed: int = 0,
                 llm_factory: Callable[..., Any] | None = None, sampling_params: Callable[..., Any] | None = None):
        from spark_core.model.loading import load_processor
        from spark_core.rollout.vllm_backend import engine_kwargs

        if llm_factory is None:
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
            # one engine per torchrun rank, inside that rank's process (the weights can then be
            # handed over in memory); the engine core must not run in a child process
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            from vllm import LLM, SamplingParams

            llm_factory, sampling_params = LLM, SamplingParams
        from spark_core.model.token_ids import TokenIds

        self.processor = load_processor(model_dir, model_cfg)
        self.ids = TokenIds.from_tokenizer(self.processor)
        # the engine's own share of the card: the trainer already holds its part
        kwargs = engine_kwargs(model_dir, model_cfg, rollout_cfg.tensor_parallel_size,
                               rollout_cfg.colocated_gpu_memory_utilization, seed=seed, processor=self.processor)
        kwargs["enable_sleep_mode"] = True
        # no multimodal processor cache: its entries would outlive sleeps and weight loads
        kwargs["mm_processor_cache_gb"] = 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        free_cached_memory()  # vLLM measures free memory at start-up
        self.llm = llm_factory(**kwargs)
        self._sampling_params = sampling_params
        self.asleep = False
        self.synced_tensors = 0

    def release(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = True

    def sync(self, trainer) -> None:
        if self.asleep:
            free_cached_memory()
            self.llm.wake_up(tags=["weights"])
        n = self._load(hf_weights(trainer.full_state_dict_iter()))
        if self.asleep:
            free_cached_memory()
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self._reset_caches()
        self.synced_tensors = n

    def _load(self, weights: Iterator[tuple[str, Any]]) -> int:
        """Stream the weights into the engine's model; the number of tensors loaded.
        Raises if the engine's model has a parameter that the stream did not load."""
        count = 0

        def counted():
            nonlocal count
            for item in weights:
                count += 1
                yield item

        def load(model) -> tuple[set[str], set[str]]:
            import torch

            with torch.no_grad():
                loaded = model.load_weights(counted())
            if loaded is None:
                raise RuntimeError("the vLLM model's load_weights returned no set of loaded names, so a partial "
                                   "weight sync could not be detected")
            return set(loaded), {name for name, _ in model.named_parameters()}

        apply_model = getattr(self.llm, "apply_model", None)
        # vLLM's public path to the model inside each worker; in process (the engine core and
        # its one worker live in this rank), so the generator is consumed here
        results = apply_model(load) if callable(apply_model) else [load(_engine_model(self.llm))]
        for loaded, expected in results:
            missing = sorted(expected - loaded)
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise RuntimeError(f"weight sync left {len(missing)} of the vLLM model's {len(expected)} parameters "
                                   f"without new values ({shown}); the trainer streamed {count} tensors")
        return count

    def _reset_caches(self) -> None:
        """Forget what the engine computed with the weights it had: prefix-cached KV blocks
        and cached vision-encoder outputs (where this vLLM has an encoder cache reset)."""
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM did not reset its prefix cache (requests still running?)")
        for owner in (self.llm, getattr(self.llm, "llm_engine", None)):
            reset = getattr(owner, "reset_encoder_cache", None)
            if callable(reset):
                reset()
                break

    def generate(self, prompts: list[dict], spec: SamplingSpec, desc: str = "rollout") -> list[Sample]:
        from spark_core.rollout.vllm_backend import build_requests, request_seed, sampling_kwargs, samples_from_outputs

        if not prompts:
            return []
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: call sync(trainer) before generating")
        base = sampling_kwargs(spec, self.ids)
        params = [self._sampling_params(**{**base, "seed": request_seed(spec.seed, r["prompt_id"])}) for r in prompts]
        outputs = self.llm.generate(build_requests(self.processor, prompts), params, use_tqdm=False)
        return samples_from_outputs(prompts, outputs, spec, self.ids)


def _engine_model(llm):
    """The torch model inside an in-process vLLM engine (V1 engine, no child process)."""
    engine = llm.llm_engine
    for path in ("model_executor.driver_worker.worker.model_runner.model",
                 "model_executor.driver_worker.model_runner.model",
                 "engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model"):
        obj = engine
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise RuntimeError("cannot reach the model inside the vLLM engine: is VLLM_ENABLE_V1_MULTIPROCESSING=0 set?")


def make_colocated(cfg, trainer, model_dir: str):
    """The colocated engine the config asks for (rollout.backend: hf | vllm)."""
    if cfg.rollout.backend == "hf":
        return ColocatedHF(trainer, cfg.model)
    if cfg.rollout.backend == "vllm":
        return ColocatedVLLM(model_dir, cfg.model, cfg.rollout, seed=cfg.seed)
    raise ValueError(f"unknown rollout backend {cfg.rollout.backend!r}")
