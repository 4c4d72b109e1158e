"""Per-GPU memory of a colocated segment: the DeepSpeed trainer and a vLLM engine on one card.

In segment mode every rank builds its trainer first (policy and reference, ZeRO
partitions, Adam moments) and then a vLLM engine with `enable_sleep_mode=True` beside
it. vLLM refuses to start when the card's free memory is below
`gpu_memory_utilization` x total (`vllm/v1/worker/gpu_worker.py`, `init_device`), and
inside that budget it needs the full bf16 weights (divided by the tensor-parallel
size), its profiling activations and CUDA graphs, and a KV cache that holds at least
one sequence of `max_model_len` tokens. So a colocated preset fits only if

    trainer state + utilization x total <= total                       (engine starts)
    utilization x total - engine weights - engine overhead >= KV floor (KV cache fits)

`colocated_budget` does this arithmetic in GiB (2**30 bytes); `check_colocated`
raises a ValueError with the numbers when either inequality fails. The trainer's
state per GPU, for N parameters, world size W, bf16 with fp32 master weights and
AdamW (DeepSpeed's mixed-precision layout, gradients accumulated in fp32):

    ZeRO-3: bf16 weights 2N/W + fp32 master 4N/W + Adam m, v 8N/W + fp32 gradients 4N/W
    ZeRO-2: bf16 weights 2N   + (4N + 8N + 4N)/W
    ZeRO-1: bf16 weights 2N   + bf16 gradients 2N + (4N + 8N)/W
    ZeRO-0: bf16 weights 2N   + fp32 gradients 4N + 12N
    reference model (kl_coef > 0): 2N/W under ZeRO-3, else 2N
    DeepSpeed buffers: ZeRO-3 keeps up to stage3_max_live_parameters (1e9) gathered
      bf16 weights and one fp32 reduce bucket (5e8 elements); stages 1-2 a reduce
      and an all-gather bucket (5e8 elements each, fp32)
    CUDA context, NCCL and allocator slack: TRAINER_FIXED_GIB

These are DeepSpeed's defaults, which `spark_core.train.engine.deepspeed_config`
does not change. Activations are not counted: the engine sleeps (level 1: weights
offloaded to CPU, KV cache dropped) while the trainer runs forward and backward, and
the trainer empties PyTorch's cache before the engine is built or woken.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

GIB = 2**30

# what torch.cuda.mem_get_info reports as total memory (the figure vLLM multiplies by
# gpu_memory_utilization), by the accelerator names the presets use
GPU_TOTAL_GIB = {"nvidia-h100": 79.1, "nvidia-h100-80gb": 79.1, "nvidia-a100-80gb": 79.1, "nvidia-h200": 139.8}

# vLLM's profiling activations (max_num_batched_tokens through the model, the vision
# encoder's largest image), its CUDA graphs and sampler buffers; a 7B engine's
# startup log puts them at 2-4 GiB
ENGINE_OVERHEAD_GIB = 4.0
# CUDA context (~0.5 GiB), NCCL communicators and the caching allocator's fragmentation
TRAINER_FIXED_GIB = 3.0
ZERO3_MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed's default stage3_max_live_parameters
REDUCE_BUCKET = 5e8  # DeepSpeed's default reduce_bucket_size / allgather_bucket_size (elements)


def effective_zero_stage(zero_stage: int, world: int, single_rank_stage: int = 1) -> int:
    """The ZeRO stage the trainer runs. A single rank has nothing to partition over, yet
    ZeRO-3 there still gathers and releases every module's weights in every micro-batch
    (and ZeRO-2 still routes every gradient through its reduce hooks), so world size 1
    runs at most `single_rank_stage` (train.single_rank_zero_stage, 1 by default: the same
    DeepSpeed ZeRO optimizer as stage 2, with its skip of non-finite steps, and the same
    memory as ZeRO-3 on one rank). Several ranks keep the stage asked for."""
    return min(int(zero_stage), int(single_rank_stage)) if int(world) <= 1 else int(zero_stage)


@dataclass(frozen=True)
class ModelSize:
    """What the budget needs to know of a checkpoint."""

    params: float  # every parameter, vision tower included
    layers: int  # decoder layers
    kv_heads: int
    head_dim: int
    max_model_len: int  # the context vLLM sizes its KV floor by (max_position_embeddings)
    dtype_bytes: int = 2  # bf16
    name: str = ""


# the checkpoints the GPU presets are meant for (Qwen/Qwen2.5-VL-*-Instruct config.json;
# parameter counts as in benchmarks/step_time_estimate.py)
PRESET_MODELS = {
    "7b-8xh100": ModelSize(8.3e9, 28, 4, 128, 128000, name="Qwen2.5-VL-7B-Instruct"),
    "32b-16xh100": ModelSize(33.5e9, 64, 8, 128, 128000, name="Qwen2.5-VL-32B-Instruct"),
}


def safetensors_params(path: str) -> int:
    """Parameters stored in a directory's *.safetensors files, read from their headers."""
    import math
    import struct

    total = 0
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def model_size_from_dir(path: str) -> ModelSize | None:
    """A local Hugging Face directory's size (config.json and the safetensors headers),
    or None when it is not a readable local checkpoint. The engine runs it in bf16."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path) as f:
        cfg = json.load(f)
    params = safetensors_params(path)
    if params <= 0:
        return None
    text = cfg.get("text_config") or cfg
    heads = int(text["num_attention_heads"])
    return ModelSize(params=float(params), layers=int(text["num_hidden_layers"]),
                     kv_heads=int(text.get("num_key_value_heads", heads)),
                     head_dim=int(text.get("head_dim") or int(text["hidden_size"]) // heads),
                     max_model_len=int(text.get("max_position_embeddings", 32768)),
                     name=os.path.basename(os.path.normpath(path)))


def trainer_gib(params: float, world: int, zero_stage: int, reference: bool, bf16: bool = True) -> dict[str, float]:
    """The trainer's persistent memory on one GPU, by item (GiB)."""
    n, w = float(params), max(1, int(world))
    weight_bytes = 2 if bf16 else 4
    master = 4 if bf16 else 0  # fp32 master copy (fp32 training updates the weights themselves)
    if zero_stage >= 3:
        items = {"weights": weight_bytes * n / w, "master weights + Adam": (master + 8) * n / w,
                 "gradients (fp32)": 4 * n / w}
        buffers = weight_bytes * min(n, ZERO3_MAX_LIVE_PARAMETERS) + 4 * min(n, REDUCE_BUCKET)
    elif zero_stage == 2:
        items = {"weights": weight_bytes * n, "master weights + Adam": (master + 8) * n / w,
                 "gradients (fp32)": 4 * n / w}
        buffers = 2 * 4 * min(n, REDUCE_BUCKET)
    elif zero_stage == 1:
        items = {"weights": weight_bytes * n, "master weights + Adam": (master + 8) * n / w,
                 "gradients": weight_bytes * n}
        buffers = 2 * 4 * min(n, REDUCE_BUCKET)
    else:
        items = {"weights": weight_bytes * n, "master weights + Adam": (master + 8) * n, "gradients (fp32)": 4 * n}
        buffers = 0.0
    if reference:
        items["reference model"] = weight_bytes * n / (w if zero_stage >= 3 else 1)
    items["DeepSpeed buffers"] = buffers
    out = {k: v / GIB for k, v in items.items()}
    out["CUDA context, NCCL, slack"] = TRAINER_FIXED_GIB
    return out


@dataclass(frozen=True)
class ColocatedBudget:
    gpu_gib: float
    utilization: float
    trainer: dict[str, float]  # item -> GiB
    engine_weights_gib: float
    kv_floor_gib: float  # one max_model_len sequence
    kv_bytes_per_token: float  # per GPU
    model: ModelSize
    world: int
    tensor_parallel: int
    zero_stage: int

    @property
    def trainer_gib(self) -> float:
        return sum(self.trainer.values())

    @property
    def engine_gib(self) -> float:
        return self.utilization * self.gpu_gib

    @property
    def kv_gib(self) -> float:
        """The KV cache the engine is left with inside its budget."""
        return self.engine_gib - self.engine_weights_gib - ENGINE_OVERHEAD_GIB

    @property
    def free_after_trainer_gib(self) -> float:
        return self.gpu_gib - self.trainer_gib

    @property
    def max_utilization(self) -> float:
        return self.free_after_trainer_gib / self.gpu_gib

    @property
    def min_utilization(self) -> float:
        return (self.engine_weights_gib + ENGINE_OVERHEAD_GIB + self.kv_floor_gib) / self.gpu_gib

    @property
    def fits(self) -> bool:
        return self.engine_gib <= self.free_after_trainer_gib and self.kv_gib >= self.kv_floor_gib

    def explain(self) -> str:
        m = self.model
        items = ", ".join(f"{k} {v:.1f}" for k, v in self.trainer.items())
        kv_tokens = max(0.0, self.kv_gib) * GIB / self.kv_bytes_per_token
        return (
            f"{m.name or 'model'} ({m.params / 1e9:.1f}B parameters) on {self.gpu_gib:.1f} GiB GPUs, world {self.world}, "
            f"ZeRO-{self.zero_stage}, engine tensor-parallel {self.tensor_parallel}: "
            f"trainer {self.trainer_gib:.1f} GiB per GPU ({items}); "
            f"engine budget {self.utilization:.2f} x {self.gpu_gib:.1f} = {self.engine_gib:.1f} GiB against "
            f"{self.free_after_trainer_gib:.1f} GiB free after the trainer; inside it bf16 weights "
            f"{self.engine_weights_gib:.1f} + overhead {ENGINE_OVERHEAD_GIB:.1f} leave a KV cache of {self.kv_gib:.1f} GiB "
            f"({kv_tokens:,.0f} tokens at {self.kv_bytes_per_token / 1024:.0f} KiB each), "
            f"and one {m.max_model_len}-token sequence needs {self.kv_floor_gib:.1f} GiB. "
            + (f"Utilizations from {self.min_utilization:.2f} to {self.max_utilization:.2f} fit"
               if self.min_utilization <= self.max_utilization else
               f"No utilization fits (the engine needs {self.min_utilization:.2f}, the trainer leaves "
               f"{self.max_utilization:.2f})"))


def colocated_budget(model: ModelSize, *, gpu_gib: float, utilization: float, world: int, zero_stage: int,
                     tensor_parallel: int = 1, reference: bool = True, bf16: bool = True) -> ColocatedBudget:
    tp = max(1, int(tensor_parallel))
    kv_per_token = 2 * model.layers * max(1, model.kv_heads // tp) * model.head_dim * model.dtype_bytes
    return ColocatedBudget(
        gpu_gib=gpu_gib, utilization=utilization,
        trainer=trainer_gib(model.params, world, zero_stage, reference, bf16),
        engine_weights_gib=model.params * model.dtype_bytes / tp / GIB,
        kv_floor_gib=model.max_model_len * kv_per_token / GIB, kv_bytes_per_token=kv_per_token,
        model=model, world=world, tensor_parallel=tp, zero_stage=zero_stage)


def budget_for(cfg) -> ColocatedBudget | None:
    """The budget of a config's colocated segment, or None where none applies: not a
    vLLM segment, an accelerator of unknown size, or a model of unknown size (a bucket
    URI on a preset without a nominal checkpoint)."""
    if cfg.loop.mode != "segment" or cfg.rollout.backend != "vllm":
        return None
    gpu = GPU_TOTAL_GIB.get(cfg.cluster.segment.accelerator.lower())
    model = (model_size_from_dir(cfg.model.path) if cfg.model.path and os.path.isdir(cfg.model.path) else None) \
        or PRESET_MODELS.get(cfg.preset)
    if gpu is None or model is None:
        return None
    seg = cfg.cluster.segment
    world = max(1, seg.nproc_per_node) * max(1, seg.nnodes)
    return colocated_budget(model, gpu_gib=gpu, utilization=cfg.rollout.colocated_gpu_memory_utilization,
                            world=world, zero_stage=effective_zero_stage(cfg.train.zero_stage, world,
                                                                        cfg.train.single_rank_zero_stage),
                            tensor_parallel=cfg.rollout.tensor_parallel_size, reference=cfg.train.kl_coef > 0,
                            bf16=cfg.train.bf16)


def check_colocated(cfg) -> ColocatedBudget | None:
    """Refuse a segment whose trainer and vLLM engine cannot share the card (ValueError
    with the arithmetic); the budget when it fits, None when no budget applies."""
    budget = budget_for(cfg)
    if budget is not None and not budget.fits:
        raise ValueError(
            f"the colocated segment does not fit: {budget.explain()}. Set rollout.colocated_gpu_memory_utilization "
            f"inside that range, or use loop.mode 'dag' (rollouts on their own GPUs), a larger "
            f"rollout.tensor_parallel_size or more GPUs (docs/cluster.md, 'Memory of a colocated segment')")
    return budget
