"""One typed configuration tree for the whole pipeline, with named presets.

Every stage reads only its own section, and every stage's cache key includes the
hash of that section, so changing e.g. the learning rate re-runs the update but
keeps cached rollouts of earlier epochs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

ARMS = ("policy", "reward", "policy_reward", "spark")
Arm = Literal["policy", "reward", "policy_reward", "spark"]

# Instruction appended to every question; the verifier only rewards \boxed{}.
ANSWER_SUFFIX = "Think it through step by step, then give the final answer in \\boxed{}."


@dataclass
class TinyModelConfig:
    """Sizes of the embedded tiny Qwen2.5-VL (random init) and its vocabulary."""

    # "compact": a byte-level BPE of `vocab_size` tokens learnt from the synthetic task and
    # recycle template text (spark_core/model/tokenizer.py), Qwen's special tokens and chat
    # template kept; "qwen": Qwen2's real 151,643-token vocabulary (152,064 embedding rows),
    # whose LM head is ~97% of a 64-wide model's multiply-adds per generated token.
    vocab: str = "compact"
    vocab_size: int = 1024  # compact only: BPE tokens, special tokens and the 256 bytes included

    # The tied 152k-row embedding/LM head is ~9.7M of the parameters and most of the
    # compute per response token, and its cost grows with hidden_size; depth and the
    # vision tower (16 image tokens at 112 px) are cheap next to it, so they are larger.
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 4
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 256
    vision_num_heads: int = 4
    # std of the tied embedding/LM head rows. Qwen's 0.02 leaves a hidden-64 model's
    # logits nearly flat, and the warm start then spends its first ~60 steps growing
    # them; a larger start lets it emit its answer tokens within a few steps.
    embed_init_std: float = 0.1
    # "fan_in": every linear and patch-embedding weight ~ N(0, 1/fan_in), the std that
    # keeps activations at unit scale through a narrow network. Qwen's config value
    # (0.02, right for a 3584-wide model) shrinks a 64-wide layer's output ~6x, so the
    # answer barely depends on the image and the warm start sits on a plateau (the
    # per-task marginal) for ~150 steps. "config": the checkpoint config's initializer_range.
    weight_init: str = "fan_in"
    seed: int = 0


@dataclass
class ModelConfig:
    """Which model to start from.

    path: "tiny" builds the embedded tiny model; anything else is a local Hugging Face
    directory (e.g. a downloaded Qwen/Qwen2.5-VL-7B-Instruct or internlm/Spark-VL-7B).
    """

    path: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False  # never execute code shipped with weights unless asked
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 64 * 28 * 28  # same limit for rollout (hf/vllm) and trainer processor
    dtype: str = "float32"  # "bfloat16" on GPU presets
    attn_implementation: str = "sdpa"  # "flash_attention_2" when flash-attn is installed


@dataclass
class DataConfig:
    """Training/eval data. train_path "" means the synthetic visual-math generator."""

    train_path: str = ""
    eval_path: str = ""
    synthetic_train: int = 3000  # enough distinct pictures that the warm start cannot memorise them
    synthetic_eval: int = 200  # standard error of accuracy <= 0.035
    # which synthetic tasks (spark_core.data.synthetic): the colour-amount tasks the tiny
    # model learns to read; the printed-digit tasks ("count", "read_number", "bar_max",
    # "rect_area", "add_shown") need a model that can read glyphs
    synthetic_tasks: tuple[str, ...] = ("count_dots", "total_dots", "more_dots", "bar_height", "grid_area")
    image_size: int = 112
    seed: int = 1234
    max_prompt_tokens: int = 512  # rows whose prompt is longer are quarantined


@dataclass
class BootstrapConfig:
    """Short supervised warm start on worked solutions (only sensible for the tiny model)."""

    enabled: bool = True
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3  # 3e-3 learns the answer format sooner but then reads the images less well
    judge_fraction: float = 0.25  # share of judge-format examples, so the judge role has a format
    # share of reflection-format examples (a wrong answer shown, the true answer as target), so
    # that the recycled pass's reflection prompts are solved rather than given a verdict
    reflection_fraction: float = 0.0
    brief_targets: bool = True  # targets are just "\\boxed{answer}" (cheaper per example on CPU)


@dataclass
class RolloutConfig:
    backend: Literal["hf", "vllm"] = "hf"
    prompts_per_epoch: int = 64
    n_samples: int = 8  # G
    # 1.0 as published (the GPU presets); the tiny default samples at 0.7: at 1.0 its first
    # epoch turned total_dots' greedy answers into the task's most common answer (0.86 -> 0.53),
    # at 0.7 it kept them (0.80; docs/tiny-default.md)
    temperature: float = 0.7
    # nucleus sampling for rollouts; 1.0 = the full distribution, as published
    # (benchmarks/research/rollout_tail.py measures what a cut does to the samples)
    top_p: float = 1.0
    max_new_tokens: int = 16
    n_shards: int = 2  # map_task shards over prompts
    gpu_memory_utilization: float = 0.5
    # The vLLM engine of a segment (loop.mode "segment") shares each GPU with the trainer,
    # which is built first: vLLM refuses to start unless this share of the card is still
    # free, so it must leave room for the trainer's weights, ZeRO shards, Adam moments and
    # reference model, unlike `gpu_memory_utilization` of a rollout pod that has the GPU to
    # itself. Checked at config time (spark_core/memory_budget.py, docs/cluster.md).
    colocated_gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1


@dataclass
class RewardConfig:
    timeout_s: float = 5.0  # per-sample verifier timeout; a hang scores 0
    workers: int = 2


@dataclass
class RecycleConfig:
    arm: Arm = "spark"
    p_pointwise_mixed: float = 0.3
    max_judge_fraction: float = 0.5  # at most half of the recycled batch is judge data
    cot_reflection_fraction: float = 0.5  # half of the reflection samples show the wrong CoT
    recycled_batch: int = 0  # 0 = same as prompts_per_epoch
    seed: int = 42


@dataclass
class TrainConfig:
    # tiny default: at 1e-4, p(answer) rose in each of 5 policy epochs of 128 prompts
    # (0.263 -> 0.295) and held-out accuracy dipped then recovered; 2e-4 lost 13 points in
    # one epoch (docs/tiny-default.md). The GPU presets use the published 5e-7
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.03
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eps_clip: float = 0.2
    kl_coef: float = 0.001
    micro_batch_size: int = 16  # samples per forward/backward on one rank
    # samples per optimizer step over all ranks: must be micro_batch_size x gradient
    # accumulation x update world size (checked by validate_train_batch)
    train_batch_size: int = 64
    # > 0: each rank's share of an optimizer step is cut by tokens instead of into
    # micro_batch_size samples: sorted by length, micro-batches of at most this many tokens
    # through the model (longest x count padded, the sum packed), so short samples share a
    # forward instead of each padding to the longest of a fixed group (verl's
    # use_dynamic_bsz). Steps keep train_batch_size samples and the step-token loss mean,
    # so the gradient is the same whatever the cut. 0: fixed micro_batch_size.
    micro_batch_tokens: int = 0
    # padding-free micro-batches: the sequences concatenated into one row, attention kept
    # within each, M-RoPE positions as if alone (spark_core/model/packing.py; verl's
    # use_remove_padding). Saves the padding's compute; needs model.attn_implementation
    # sdpa, eager or flash_attention_2/3 (flash-attn's varlen kernel)
    packed: bool = False
    ppo_epochs: int = 1
    zero_stage: int = 2
    # the stage a one-rank job runs instead, when lower: one rank has nothing to partition,
    # and ZeRO-3 there still gathers and frees every module's weights in every micro-batch
    # (spark_core/memory_budget.py, effective_zero_stage)
    single_rank_zero_stage: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    # keep the vision encoder's weights fixed in the GRPO update (as VLM RL recipes often
    # do when the encoder is already trained); off: the whole model is trained, as published
    # (the GPU presets). On in the tiny default: its warm-started encoder is what reads the
    # dots, and with it trained a spark epoch took total_dots from 0.90 to 0.38 (frozen: 0.80)
    freeze_vision: bool = True
    max_bad_steps: int = 3  # consecutive non-finite steps that stop the run
    # the recycled (judge and reflection) pass's learning rate, as a share of the schedule's.
    # Adam moves every weight by about the learning rate whatever the size of the signal, so
    # a pass whose rewards barely vary (a judge that cannot yet judge) perturbs the solver as
    # much as a pass that teaches it (docs/tiny-default.md); 1.0 = the same rate, as published
    # (the GPU presets). The tiny default: at 1.0 a spark epoch took held-out accuracy from
    # 0.562 to 0.200, at 0.1 to 0.503 (policy pass alone: 0.528-0.543)
    recycled_lr_scale: float = 0.1
    # pi_old is recomputed by the trainer; the rollout engine's log-probs only serve to log
    # their gap and, when tis_cap > 0, for truncated importance sampling: each token's
    # surrogate is weighted by min(pi_old_trainer / pi_rollout, tis_cap) (e.g. 2.0). Off: 0.
    tis_cap: float = 0.0
    seed: int = 42


@dataclass
class EvalConfig:
    max_new_tokens: int = 16
    tts_rounds: int = 2
    judge_samples: int = 100  # 300 balanced judge prompts
    # held-out problems whose true answer's probability is measured by teacher forcing
    # (eval/answer_prob, eval/answer_logprob; spark_core/evaluate/likelihood.py): a smooth
    # measure of learning for models that answer with a bare \boxed{}; 0 = off
    answer_likelihood_problems: int = 128
    # evaluate the starting model, every `every`-th epoch and the last epoch (long runs
    # and benchmarks with large held-out sets may skip the epochs in between)
    every: int = 1


@dataclass
class LoopConfig:
    """How the co-evolution loop is laid out as Flyte nodes (not what it computes).

    mode "dag": one small cached node per stage and epoch (the CPU default; every
    artifact reusable on its own). mode "segment": one GPU node runs `segment_steps`
    SPARK steps with rollout and training colocated (benchmarks/run_cost.py picks K).
    Either way a block of `block_epochs` epochs runs as one sub-launch-plan execution,
    so no dynamic workflow grows past a few hundred nodes (0 = sized automatically).
    """

    mode: Literal["dag", "segment"] = "dag"
    segment_steps: int = 16
    block_epochs: int = 0


@dataclass
class StageResources:
    cpu: str = "2"
    mem: str = "8Gi"
    gpu: int = 0
    accelerator: str = ""  # "nvidia-h100" etc.; empty on CPU
    nnodes: int = 1
    nproc_per_node: int = 1


@dataclass
class ClusterConfig:
    rollout: StageResources = field(default_factory=StageResources)
    update: StageResources = field(default_factory=StageResources)
    light: StageResources = field(default_factory=lambda: StageResources(cpu="2", mem="4Gi"))
    segment: StageResources = field(default_factory=StageResources)  # the colocated K-step node
    # A ReadWriteMany PersistentVolumeClaim for optimizer/ZeRO state and checkpoints
    # between nodes, mounted at state_mount_path through pod templates; "" = object storage.
    state_volume_claim: str = ""
    state_mount_path: str = "/mnt/spark-state"


@dataclass
class SparkConfig:
    preset: str = "tiny-cpu"
    epochs: int = 2
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    recycle: RecycleConfig = field(default_factory=RecycleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SparkConfig":
        return _from_dict(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "SparkConfig":
        return cls.from_dict(json.loads(s))

    def section_hash(self, *names: str) -> str:
        """Short stable hash of some sections, used in cache keys and artifact metadata."""
        d = self.to_dict()
        payload = json.dumps({n: d[n] for n in names} if names else d, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> "SparkConfig":
        """Apply dotted overrides such as {"train.lr": 1e-5, "recycle.arm": "policy"}."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise KeyError(f"unknown config section {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise KeyError(f"unknown config field {key!r}")
            node[parts[-1]] = value
        return SparkConfig.from_dict(d)


def _from_dict(cls, d: dict[str, Any]):
    if not isinstance(d, dict):
        raise TypeError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise KeyError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, f in known.items():
        if name not in d:
            continue
        value = d[name]
        ftype = f.type if not isinstance(f.type, str) else _resolve(f.type)
        if dataclasses.is_dataclass(ftype):
            value = _from_dict(ftype, value)
        elif name in ("adam_betas", "synthetic_tasks"):
            value = tuple(value)
        kwargs[name] = value
    obj = cls(**kwargs)
    if cls is RecycleConfig and obj.arm not in ARMS:
        raise ValueError(f"recycle.arm must be one of {ARMS}, got {obj.arm!r}")
    if cls is LoopConfig:
        if obj.mode not in ("dag", "segment"):
            raise ValueError(f"loop.mode must be 'dag' or 'segment', got {obj.mode!r}")
        if obj.segment_steps < 1 or obj.block_epochs < 0:
            raise ValueError(f"loop: segment_steps must be >= 1, block_epochs >= 0: {obj}")
    return obj


def _resolve(type_name: str):
    return {
        "TinyModelConfig": TinyModelConfig,
        "ModelConfig": ModelConfig,
        "DataConfig": DataConfig,
        "BootstrapConfig": BootstrapConfig,
        "RolloutConfig": RolloutConfig,
        "RewardConfig": RewardConfig,
        "RecycleConfig": RecycleConfig,
        "TrainConfig": TrainConfig,
        "EvalConfig": EvalConfig,
        "StageResources": StageResources,
        "ClusterConfig": ClusterConfig,
        "LoopConfig": LoopConfig,
    }.get(type_name)


# ---- presets -----------------------------------------------------------


def _gpu_preset(name: str, *, gpus: int, nnodes: int, max_new_tokens: int, rollout_gpus: int,
                rollout_tp: int = 1) -> SparkConfig:
    """The paper's recipes: 64 prompts x 8 samples, lr 5e-7, ZeRO-3, bf16."""
    cfg = SparkConfig(preset=name, epochs=2)
    cfg.model = ModelConfig(path="", dtype="bfloat16", attn_implementation="flash_attention_2",
                            max_pixels=1024 * 28 * 28)
    cfg.data = DataConfig(train_path="", max_prompt_tokens=8192)
    cfg.bootstrap = BootstrapConfig(enabled=False)
    cfg.rollout = RolloutConfig(backend="vllm", prompts_per_epoch=64, n_samples=8, temperature=1.0, top_p=1.0,
                                max_new_tokens=max_new_tokens,
                                n_shards=rollout_gpus // rollout_tp, gpu_memory_utilization=0.85,
                                tensor_parallel_size=rollout_tp)
    # 64 samples per optimizer step as in SPARK: micro-batches of 64 / update GPUs, no accumulation
    cfg.train = TrainConfig(lr=5e-7, recycled_lr_scale=1.0, freeze_vision=False, micro_batch_size=64 // gpus,
                            train_batch_size=64,
                            zero_stage=3, bf16=True,
                            gradient_checkpointing=True)
    # a model that reasons first puts little probability on answering at once
    cfg.eval = EvalConfig(max_new_tokens=2048, every=20, answer_likelihood_problems=0)
    # 16 steps a segment: the smallest K at or under 20% overhead in benchmarks/run_cost.py
    cfg.loop = LoopConfig(mode="segment", segment_steps=16)
    # 7B on 80 GB: the ZeRO-3 trainer holds ~26 GiB per GPU, so the engine may take up to
    # 0.67 of the card and needs 0.33 (weights, overhead, one 128k-token sequence of KV)
    cfg.rollout.colocated_gpu_memory_utilization = 0.45
    per_node = gpus // nnodes
    update = StageResources(cpu="96", mem="1600Gi", gpu=per_node, accelerator="nvidia-h100",
                            nnodes=nnodes, nproc_per_node=per_node)
    cfg.cluster = ClusterConfig(
        rollout=StageResources(cpu=str(12 * rollout_tp), mem=f"{200 * rollout_tp}Gi", gpu=rollout_tp,
                               accelerator="nvidia-h100"),
        update=update,
        light=StageResources(cpu="8", mem="32Gi"),
        segment=dataclasses.replace(update),
        state_volume_claim="spark-state",  # an RWX claim in the project-domain namespace
    )
    return cfg


def tiny_learn_preset() -> SparkConfig:
    """`make learn`: the tiny default run long enough to learn (about 30 minutes on 2
    cores): more epochs of more prompts, and a larger held-out set so that a 10-point
    gain is well outside its noise. Same model, warm start and stages as tiny-cpu."""
    cfg = SparkConfig(preset="tiny-cpu-learn", epochs=10)
    cfg.rollout = dataclasses.replace(cfg.rollout, prompts_per_epoch=128)
    cfg.data = dataclasses.replace(cfg.data, synthetic_eval=400)
    return cfg


def preset(name: str = "tiny-cpu") -> SparkConfig:
    if name == "tiny-cpu":
        return SparkConfig()
    if name == "tiny-cpu-learn":
        return tiny_learn_preset()
    if name == "7b-8xh100":
        return _gpu_preset(name, gpus=8, nnodes=1, max_new_tokens=768, rollout_gpus=8)
    if name == "32b-16xh100":
        # 32B bf16 weights (~65 GB) leave too little KV cache on one 80 GB GPU: TP 2
        cfg = _gpu_preset(name, gpus=16, nnodes=2, max_new_tokens=1024, rollout_gpus=8, rollout_tp=2)
        # no colocated segment: the ZeRO-3 trainer holds ~46 GiB of each 80 GB GPU, and a
        # TP-2 engine needs ~51 GiB beside it (spark_core/memory_budget.py), so the rollouts
        # keep GPUs of their own
        cfg.loop = LoopConfig(mode="dag", segment_steps=16)
        return cfg
    raise KeyError(f"unknown preset {name!r}; choose from {PRESETS}")


PRESETS = ("tiny-cpu", "tiny-cpu-learn", "7b-8xh100", "32b-16xh100")


def check_registered_preset(preset_name: str, registered: str) -> None:
    """Task pods are sized from the preset named by SPARK_PRESET when the workflow is
    registered (tasks/resources.py); a `preset` input whose cluster section differs would
    run on pods sized for another preset, so it is refused, saying how to fix it."""
    if preset(preset_name).cluster != preset(registered).cluster:
        raise ValueError(
            f"preset {preset_name!r} needs other pods than the registered SPARK_PRESET={registered!r}: register "
            f"with SPARK_PRESET={preset_name} (e.g. `SPARK_PRESET={preset_name} pyflyte run --remote "
            f"workflows/spark.py spark --preset {preset_name} ...`)")


def load_config(preset_name: str = "tiny-cpu", overrides_json: str = "",
                fields: dict[str, Any] | None = None) -> SparkConfig:
    """Preset plus a JSON object of dotted overrides (the form the workflow takes), then
    `fields` (dotted keys of the workflow's own inputs, which win), checked once."""
    cfg = preset(preset_name)
    if overrides_json:
        overrides = json.loads(overrides_json)
        if not isinstance(overrides, dict):
            raise ValueError("overrides must be a JSON object of dotted keys")
        cfg = cfg.with_overrides(overrides)
    if fields:
        cfg = cfg.with_overrides(fields)
    validate_train_batch(cfg.train, update_world_size(cfg))
    from spark_core.memory_budget import check_colocated

    check_colocated(cfg)
    return cfg


def update_world_size(cfg: "SparkConfig") -> int:
    """Ranks of the update job: processes per node x nodes."""
    u = cfg.cluster.update
    return max(1, u.nproc_per_node) * max(1, u.nnodes)


def validate_train_batch(train: TrainConfig, world: int) -> int:
    """The gradient accumulation steps that make `train_batch_size`; refuses a batch that
    micro-batches x accumulation x ranks cannot make exactly (the optimizer step would
    then hold a different number of samples than the LR schedule counts)."""
    per_micro_round = train.micro_batch_size * world
    if train.micro_batch_size < 1 or train.train_batch_size < 1:
        raise ValueError(f"train.micro_batch_size ({train.micro_batch_size}) and train.train_batch_size "
                         f"({train.train_batch_size}) must be positive")
    if train.micro_batch_tokens < 0:
        raise ValueError(f"train.micro_batch_tokens ({train.micro_batch_tokens}) must be 0 (off) or positive")
    if train.train_batch_size % per_micro_round:
        raise ValueError(
            f"train.train_batch_size={train.train_batch_size} is not micro_batch_size ({train.micro_batch_size}) x "
            f"gradient accumulation x update world size ({world}): it must be a multiple of {per_micro_round} "
            f"(change train.micro_batch_size or train.train_batch_size)")
    return train.train_batch_size // per_micro_round


def trained_passes(arm: str) -> tuple[str, ...]:
    """Which rollout passes of an epoch get an optimizer update, per ablation arm.

    policy: GRPO on the problems only. reward: the problems are rolled out only to
    make judge data, and only the judge pass is trained. policy_reward and spark:
    both passes (they differ in whether reflection data are recycled).
    """
    return {
        "policy": ("policy",),
        "reward": ("recycled",),
        "policy_reward": ("policy", "recycled"),
        "spark": ("policy", "recycled"),
    }[arm]


def optimizer_steps_per_pass(n_samples_in_pass: int, train_batch_size: int) -> int:
    return max(1, -(-n_samples_in_pass // train_batch_size))


def total_optimizer_steps(cfg: "SparkConfig", world: int | None = None) -> int:
    """Every optimizer step of the run (policy and recycled passes), for the LR schedule.

    Counted with the engine's own step plan: steps of micro_batch_size x accumulation x
    world samples (`world` defaults to the configured update job)."""
    world = update_world_size(cfg) if world is None else world
    ga = validate_train_batch(cfg.train, world)
    per_step = cfg.train.micro_batch_size * ga * world
    sizes = {"policy": cfg.rollout.prompts_per_epoch, "recycled": cfg.recycle.recycled_batch or cfg.rollout.prompts_per_epoch}
    per_epoch = sum(optimizer_steps_per_pass(sizes[p] * cfg.rollout.n_samples, per_step)
                    for p in trained_passes(cfg.recycle.arm))
    return cfg.epochs * per_epoch * cfg.train.ppo_epochs


def prefix_view(cfg: "SparkConfig") -> "SparkConfig":
    """The config as the stages before the epoch loop see it (data, model, warm start,
    held-out judge set): fields that only shape the loop are reset to their defaults,
    so runs that differ only in those (e.g. the ablation arms) share the cached prefix.

    The seeds are among them: `seed` (prompt order, rollout sampling), `recycle.seed`
    and `train.seed` vary the RL loop, while the warm start and judge set always use the
    default seed, so runs over several seeds start from the same model. `data.seed` and
    `model.tiny.seed` change the data and the initial weights."""
    d = cfg.to_dict()
    d["epochs"] = SparkConfig().epochs
    d["seed"] = SparkConfig().seed
    d["recycle"]["seed"] = RecycleConfig().seed
    d["eval"]["every"] = EvalConfig().every
    d["train"] = dataclasses.asdict(TrainConfig())
    d["recycle"]["arm"] = "spark"
    d["recycle"]["recycled_batch"] = 0
    d["rollout"]["prompts_per_epoch"] = RolloutConfig().prompts_per_epoch
    d["rollout"]["n_shards"] = RolloutConfig().n_shards
    d["loop"] = dataclasses.asdict(LoopConfig())
    return SparkConfig.from_dict(d)


# The warm start and the held-out judge set always use this seed, so that runs over
# several seeds (`seed`) start from the same model and are judged on the same prompts;
# `data.seed` and `model.tiny.seed` change the data and the initial weights.
PREFIX_SEED = 42


class StageConfig:
    """The config as one stage sees it: the sections its task takes as inputs, read as
    attributes like a SparkConfig (`cfg.rollout.n_samples`). Reading a section the task
    does not take raises, so a stage cannot depend on config that is not in its cache key."""

    def __init__(self, stage: str, **parts: Any):
        self.__dict__.update(parts, _stage=stage)

    def __getattr__(self, name: str):  # only called for what the stage did not declare
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"the {self._stage!r} stage reads cfg.{name}, which its task does not take as an input; "
                             f"add it to the task's inputs (tasks/) so that it is part of the stage's cache key")

    def section_hash(self, *names: str) -> str:
        payload = {n: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                   for n, v in sorted(self.__dict__.items()) if n != "_stage" and (not names or n in names)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
