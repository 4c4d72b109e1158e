"""One typed configuration tree for the whole pipeline, with named presets.

Each section is a dataclass whose fields say what they do (`help`, printed by
`python -m spark_core.config`). Flyte tasks take the sections they read as typed
inputs (tasks/), so a stage's cache key holds exactly its own settings: a new
`train.lr` reruns the updates and keeps the first epoch's rollouts and rewards.
`load_config` parses a preset plus dotted overrides with pydantic (unknown keys, wrong
types and values outside a field's choices are refused, naming the field) and runs the
checks that span sections.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

ARMS = ("policy", "reward", "policy_reward", "spark")
Arm = Literal["policy", "reward", "policy_reward", "spark"]

# Instruction appended to every question; the verifier only rewards \boxed{}.
ANSWER_SUFFIX = "Think it through step by step, then give the final answer in \\boxed{}."

# every section refuses keys it does not define (a typo in an override is an error)
_STRICT = ConfigDict(extra="forbid")


def opt(default: Any, help: str) -> Any:
    """A field with its documentation (TRL-style `help` metadata)."""
    return field(default=default, metadata={"help": help})


def section(factory, help: str) -> Any:
    return field(default_factory=factory, metadata={"help": help})


@dataclass
class TinyModelConfig:
    """Sizes of the embedded tiny Qwen2.5-VL (random init) and its vocabulary."""

    __pydantic_config__ = _STRICT
    vocab: Literal["compact", "qwen"] = opt(
        "compact", "compact: a byte-level BPE of vocab_size tokens learnt from the synthetic task and recycle "
        "template text, Qwen's special tokens and chat template kept (spark_core/model/tokenizer.py); qwen: "
        "Qwen2's real 151,643-token vocabulary (152,064 embedding rows), whose LM head is ~97% of a 64-wide "
        "model's multiply-adds per generated token")
    vocab_size: int = opt(1024, "compact only: BPE tokens, special tokens and the 256 bytes included")
    hidden_size: int = opt(64, "width of the language model")
    intermediate_size: int = opt(256, "MLP width of the language model")
    num_hidden_layers: int = opt(4, "language-model layers")
    num_attention_heads: int = opt(4, "attention heads per layer")
    num_key_value_heads: int = opt(2, "key/value heads per layer (grouped-query attention)")
    vision_depth: int = opt(4, "vision-tower blocks (16 image tokens at 112 px)")
    vision_hidden_size: int = opt(128, "vision-tower width")
    vision_intermediate_size: int = opt(256, "vision-tower MLP width")
    vision_num_heads: int = opt(4, "vision-tower attention heads")
    embed_init_std: float = opt(
        0.1, "std of the tied embedding/LM head rows. Qwen's 0.02 leaves a 64-wide model's logits nearly "
        "flat, and the warm start spends its first ~60 steps growing them")
    weight_init: Literal["fan_in", "config"] = opt(
        "fan_in", "fan_in: every linear and patch-embedding weight ~ N(0, 1/fan_in), which keeps activations "
        "at unit scale through a narrow network (Qwen's 0.02, right for a 3584-wide model, shrinks a 64-wide "
        "layer's output ~6x, and the warm start then sits ~150 steps on a plateau); config: the checkpoint "
        "config's initializer_range")
    seed: int = opt(0, "seed of the initial weights")


@dataclass
class ModelConfig:
    """Which model to start from, and how it is loaded."""

    __pydantic_config__ = _STRICT
    path: str = opt("tiny", '"tiny" builds the embedded tiny model; anything else is a Hugging Face directory or '
                            'bucket URI (e.g. Qwen/Qwen2.5-VL-7B-Instruct or internlm/Spark-VL-7B, downloaded)')
    tiny: TinyModelConfig = section(TinyModelConfig, "the embedded tiny model (path tiny)")
    trust_remote_code: bool = opt(False, "execute code shipped with the weights (never unless asked)")
    min_pixels: int = opt(4 * 28 * 28, "smallest image area the processor resizes to (pixels)")
    max_pixels: int = opt(64 * 28 * 28, "largest image area, the same for rollout (hf/vllm) and trainer")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "weights' dtype (bfloat16 on GPU presets)")
    attn_implementation: str = opt("sdpa", "transformers attention kernel: sdpa, eager, or flash_attention_2 "
                                           "when flash-attn is installed")


@dataclass
class DataConfig:
    """Training and held-out data."""

    __pydantic_config__ = _STRICT
    train_path: str = opt("", 'training rows (.json/.jsonl/.parquet, local or bucket URI); "" = the synthetic '
                              'visual-math generator')
    eval_path: str = opt("", 'held-out rows; "" = the synthetic generator\'s held-out split')
    synthetic_train: int = opt(3000, "synthetic training problems: enough distinct pictures that the warm start "
                                     "cannot memorise them")
    synthetic_eval: int = opt(200, "synthetic held-out problems (standard error of accuracy <= 0.035)")
    synthetic_tasks: tuple[str, ...] = opt(
        ("count_dots", "total_dots", "more_dots", "bar_height", "grid_area"),
        "synthetic tasks (spark_core.data.synthetic): the colour-amount tasks the tiny model learns to read; the "
        "printed-digit tasks (count, read_number, bar_max, rect_area, add_shown) need a model that reads glyphs")
    image_size: int = opt(112, "side of the synthetic images (pixels)")
    seed: int = opt(1234, "seed of the synthetic data")
    max_prompt_tokens: int = opt(512, "rows whose prompt is longer are quarantined")


@dataclass
class BootstrapConfig:
    """Short supervised warm start on worked solutions (only sensible for the tiny model)."""

    __pydantic_config__ = _STRICT
    enabled: bool = opt(True, "run the warm start (GPU presets start from an instruct model and skip it)")
    steps: int = opt(
        170, "optimizer steps. 170 in the tiny presets: the format is learnt but grid_area and total_dots are "
        "not yet read (0.500 and 0.125), which leaves RL room to gain; 200 steps read them (0.812 and 0.863) "
        "and left RL about 6.5 points of the mean (docs/tiny-default.md)")
    batch_size: int = opt(32, "examples per step")
    lr: float = opt(1e-3, "AdamW learning rate (3e-3 learns the answer format sooner but reads the images less well)")
    judge_fraction: float = opt(0.25, "share of judge-format examples, so that the judge role has a format")
    judge_target: Literal["verdict", "answer_then_verdict", "compare"] = opt(
        "verdict", 'what a judge example\'s target says: verdict: only "\\boxed{Yes}"; answer_then_verdict: the '
        'problem\'s own answer first, then the verdict ("7 \\boxed{No}"), so that the judge compares an answer '
        'it has written with the one shown instead of doing both in one forward pass; compare: the own answer, '
        'then the answers shown, then the verdict ("7 | 5 \\boxed{No}", pairwise "7 | A 5 B 7 \\boxed{B}"), so '
        'that the verdict compares neighbouring tokens')
    reflection_fraction: float = opt(
        0.0, "share of reflection-format examples (a wrong answer shown, the true answer as target), so that the "
        "recycled pass's reflection prompts are solved rather than given a verdict")
    brief_targets: bool = opt(True, 'targets are just "\\\\boxed{answer}" (cheaper per example on CPU)')


@dataclass
class RolloutConfig:
    """Sampling G answers per prompt."""

    __pydantic_config__ = _STRICT
    backend: Literal["hf", "vllm"] = opt("hf", "hf: transformers generate (CPU, tests); vllm: the GPU engine")
    prompts_per_epoch: int = opt(128, "problems rolled out per epoch (the policy pass's batch)")
    n_samples: int = opt(8, "G, samples per prompt")
    balance_sources: bool = opt(
        True, "each epoch's problems come from the training rows' sources (the `source` column) in equal shares; "
        "off: a uniform draw, as published (GPU presets). On in the tiny default: with uniform draws its five "
        "tasks' shares of a 128-prompt epoch ranged 14-29%, and the rollout reward followed the mix, not the "
        "policy (docs/tiny-default.md)")
    temperature: float = opt(
        1.0, "sampling temperature, 1.0 as published. 0.7 kept a warm start's answers on a task it already "
        "read (total_dots 0.80 after one epoch, 1.0: 0.53), but from the 170-step warm start, which has those "
        "answers still to learn, 1.0 explores them (docs/tiny-default.md)")
    top_p: float = opt(1.0, "nucleus sampling; 1.0 = the full distribution, as published")
    max_new_tokens: int = opt(16, "response length limit")
    n_shards: int = opt(2, "rollout tasks per pass (map_task shards over prompts)")
    gpu_memory_utilization: float = opt(0.5, "share of a rollout pod's GPU the vLLM engine takes")
    colocated_gpu_memory_utilization: float = opt(
        0.3, "the vLLM engine's share of each GPU in a segment (loop.mode segment), where it shares the card "
        "with the trainer built first: it must leave room for the trainer's weights, ZeRO shards, Adam moments "
        "and reference model (checked at config time, spark_core/memory_budget.py, docs/cluster.md)")
    tensor_parallel_size: int = opt(1, "GPUs per vLLM engine")


@dataclass
class RewardConfig:
    """The verifiable reward: the last \\boxed{} answer checked with math_verify."""

    __pydantic_config__ = _STRICT
    timeout_s: float = opt(5.0, "per-sample verifier timeout; a hang scores 0")
    workers: int = opt(2, "verifier processes")


@dataclass
class RecycleConfig:
    """Turning rollouts into judge and reflection prompts with checkable labels."""

    __pydantic_config__ = _STRICT
    arm: Arm = opt("spark", "spark: both passes with reflection; policy: GRPO on the problems only; reward: only "
                            "the judge pass is trained; policy_reward: both passes, no reflection (ablations)")
    p_pointwise_mixed: float = opt(0.3, "share of pointwise judge prompts drawn from groups with mixed rewards")
    max_judge_fraction: float = opt(0.5, "at most this share of the recycled batch is judge data")
    mixed_groups_only: bool = opt(
        True, "judge prompts come only from problems with both a right and a wrong sample, so a pointwise "
        "prompt is as likely to show a right answer as a wrong one whatever the problem. Off: as published (GPU "
        "presets): all-right groups give Yes prompts and all-wrong groups No prompts, and a verdict read off the "
        "problem's difficulty earns the reward. Tiny default, recycled pass at 1.0x, as published: the recycled "
        "pointwise reward rose 0.50 -> 0.64 while the balanced held-out pointwise accuracy stayed at 0.500, one "
        "verdict for every prompt (docs/tiny-default.md)")
    cot_reflection_fraction: float = opt(0.5, "share of reflection samples that show the wrong reasoning, not "
                                              "just its answer")
    recycled_batch: int = opt(0, "recycled prompts per recycled pass; 0 = rollout.prompts_per_epoch")
    seed: int = opt(42, "seed of the recycling draws")


@dataclass
class TrainConfig:
    """The GRPO update (DeepSpeed)."""

    __pydantic_config__ = _STRICT
    lr: float = opt(
        1e-4, "peak learning rate. Tiny model, from a 200-step warm start: at 1e-4, p(answer) rose in each of 5 "
        "policy epochs of 128 prompts (0.263 -> 0.295); 2e-4 lost 13 points in one epoch (docs/tiny-default.md). "
        "GPU presets: the published 5e-7")
    min_lr_ratio: float = opt(0.1, "the cosine schedule ends at lr x this")
    warmup_ratio: float = opt(0.03, "share of the run's optimizer steps spent warming up")
    adam_betas: tuple[float, float] = opt((0.9, 0.95), "AdamW betas")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    eps_clip: float = opt(0.2, "PPO ratio clip")
    kl_coef: float = opt(0.001, "weight of the KL penalty to the reference (starting) model")
    micro_batch_size: int = opt(16, "samples per forward/backward on one rank")
    train_batch_size: int = opt(64, "samples per optimizer step over all ranks: micro_batch_size x gradient "
                                    "accumulation x update world size (checked by validate_train_batch)")
    micro_batch_tokens: int = opt(
        0, "> 0: each rank's share of a step is cut by tokens instead of into micro_batch_size samples (sorted by "
        "length, at most this many tokens per forward, verl's use_dynamic_bsz); the gradient is the same "
        "whatever the cut. 0: fixed micro_batch_size")
    packed: bool = opt(
        False, "padding-free micro-batches: sequences concatenated into one row, attention kept within each, "
        "M-RoPE positions as if alone (spark_core/model/packing.py); needs model.attn_implementation sdpa, eager "
        "or flash_attention_2/3")
    ppo_epochs: int = opt(1, "passes over each batch of rollouts")
    zero_stage: int = opt(2, "DeepSpeed ZeRO stage on several ranks")
    single_rank_zero_stage: int = opt(
        1, "the stage a one-rank job runs instead, when lower: one rank has nothing to partition, and ZeRO-3 "
        "there still gathers and frees every module's weights in every micro-batch (memory_budget.py)")
    bf16: bool = opt(False, "bf16 mixed precision (GPU presets)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (saves memory)")
    freeze_vision: bool = opt(
        False, "keep the vision encoder fixed in the GRPO update; off (the default): the whole model is "
        "trained, as published. On suits a warm start whose encoder already reads the images: from the 200-step "
        "one a spark epoch with it trained took total_dots from 0.90 to 0.38 (frozen: 0.80; docs/tiny-default.md)")
    max_bad_steps: int = opt(3, "consecutive non-finite steps that stop the run")
    recycled_lr_scale: float = opt(
        0.1, "the recycled (judge and reflection) pass's learning rate as a share of the schedule's. Adam moves "
        "every weight by about the learning rate whatever the size of the signal, so a pass whose rewards barely "
        "vary perturbs the solver as much as one that teaches it; 1.0 = as published (GPU presets). Tiny model, "
        "from a 200-step warm start: at 1.0 a spark epoch took held-out accuracy from 0.562 to 0.200, at 0.1 to 0.503")
    tis_cap: float = opt(
        0.0, "> 0: truncated importance sampling, each token's surrogate weighted by min(pi_old_trainer / "
        "pi_rollout, tis_cap) (e.g. 2.0); pi_old is always recomputed by the trainer. 0: off")
    seed: int = opt(42, "seed of the step plan and dropout")


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy solve accuracy and judge accuracy, kept apart."""

    __pydantic_config__ = _STRICT
    max_new_tokens: int = opt(16, "response length limit (also for the held-out judge set's sampled answers)")
    tts_rounds: int = opt(2, "rounds of self-reflection in test-time scaling (spark-eval)")
    judge_samples: int = opt(100, "held-out problems the judge set is built from (3 balanced prompts each)")
    answer_likelihood_problems: int = opt(
        128, "held-out problems whose true answer's probability is measured by teacher forcing (eval/answer_prob): "
        "a smooth measure of learning for models that answer with a bare \\\\boxed{}; 0 = off")
    every: int = opt(1, "evaluate the start, every `every`-th epoch and the last one (long runs may skip the "
                        "epochs in between)")


@dataclass
class LoopConfig:
    """How the co-evolution loop is laid out as Flyte nodes (not what it computes).

    mode "dag": one small cached node per stage and epoch (the CPU default; every
    artifact reusable on its own). mode "segment": one GPU node runs `segment_steps`
    SPARK steps with rollout and training colocated (benchmarks/run_cost.py picks K).
    Either way a block of `block_epochs` epochs runs as one sub-launch-plan execution,
    so no dynamic workflow grows past a few hundred nodes (0 = sized automatically).
    """

    __pydantic_config__ = _STRICT
    mode: Literal["dag", "segment"] = opt("dag", "dag: a node per stage and epoch; segment: K colocated epochs "
                                                 "per GPU node")
    segment_steps: int = opt(16, "K, epochs per segment node")
    block_epochs: int = opt(0, "epochs per sub-launch-plan execution; 0 = sized automatically (loop_plan.py)")

    def __post_init__(self):
        if self.segment_steps < 1 or self.block_epochs < 0:
            raise ValueError(f"loop: segment_steps must be >= 1 and block_epochs >= 0, got {self}")


@dataclass
class StageResources:
    """One kind of pod."""

    __pydantic_config__ = _STRICT
    cpu: str = opt("2", "CPU request")
    mem: str = opt("8Gi", "memory request")
    gpu: int = opt(0, "GPUs per pod")
    accelerator: str = opt("", 'GPU kind, e.g. "nvidia-h100"; empty on CPU')
    nnodes: int = opt(1, "pods of a distributed (Elastic) job")
    nproc_per_node: int = opt(1, "processes (ranks) per pod")


@dataclass
class ClusterConfig:
    """The pods of each stage (read when the workflow is registered: tasks/resources.py)."""

    __pydantic_config__ = _STRICT
    rollout: StageResources = section(StageResources, "a rollout (and evaluation) pod")
    update: StageResources = section(StageResources, "the update job")
    light: StageResources = section(lambda: StageResources(cpu="2", mem="4Gi"), "data, reward, recycle, tracking")
    segment: StageResources = section(StageResources, "the colocated K-epoch segment job")
    state_volume_claim: str = opt("", 'a ReadWriteMany PersistentVolumeClaim for optimizer/ZeRO state and '
                                      'checkpoints between nodes, mounted at state_mount_path; "" = object storage')
    state_mount_path: str = opt("/mnt/spark-state", "where the state volume is mounted")


@dataclass
class SparkConfig:
    """The whole run."""

    __pydantic_config__ = _STRICT
    preset: str = opt("tiny-cpu", "the preset this config started from")
    epochs: int = opt(3, "co-evolution epochs (SPARK steps)")
    seed: int = opt(42, "seed of the loop: prompt order and rollout sampling")
    model: ModelConfig = section(ModelConfig, ModelConfig.__doc__)
    data: DataConfig = section(DataConfig, DataConfig.__doc__)
    bootstrap: BootstrapConfig = section(BootstrapConfig, BootstrapConfig.__doc__)
    rollout: RolloutConfig = section(RolloutConfig, RolloutConfig.__doc__)
    reward: RewardConfig = section(RewardConfig, RewardConfig.__doc__)
    recycle: RecycleConfig = section(RecycleConfig, RecycleConfig.__doc__)
    train: TrainConfig = section(TrainConfig, TrainConfig.__doc__)
    eval: EvalConfig = section(EvalConfig, EvalConfig.__doc__)
    cluster: ClusterConfig = section(ClusterConfig, ClusterConfig.__doc__)
    loop: LoopConfig = section(LoopConfig, "how the loop is laid out as Flyte nodes")

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SparkConfig":
        """Parsed and checked field by field (pydantic); errors name the dotted field."""
        try:
            return _ADAPTER.validate_python(d)
        except ValidationError as e:
            raise ConfigError(_explain(e)) from None

    @classmethod
    def from_json(cls, s: str) -> "SparkConfig":
        return cls.from_dict(json.loads(s))

    def section_hash(self, *names: str) -> str:
        """Short stable hash of some sections (artifact metadata)."""
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
                    raise ConfigError(f"unknown config section in {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config field {key!r}")
            node[parts[-1]] = value
        return SparkConfig.from_dict(d)


class ConfigError(ValueError, KeyError):
    """A config that cannot run: an unknown key, a wrong type, a value out of range."""

    __str__ = ValueError.__str__  # KeyError would quote the message


_ADAPTER = TypeAdapter(SparkConfig)


def _explain(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config: " + "; ".join(lines)


def field_docs(obj=None, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, help) of every leaf field, in declaration order."""
    obj = SparkConfig() if obj is None else obj
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += field_docs(v, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, v, f.metadata.get("help", "")))
    return out


# ---- presets -----------------------------------------------------------


def _gpu_preset(name: str, *, gpus: int, nnodes: int, max_new_tokens: int, rollout_gpus: int,
                rollout_tp: int = 1) -> SparkConfig:
    """The paper's recipes: 64 prompts x 8 samples, lr 5e-7, ZeRO-3, bf16."""
    cfg = SparkConfig(preset=name, epochs=2)
    cfg.model = ModelConfig(path="", dtype="bfloat16", attn_implementation="flash_attention_2",
                            max_pixels=1024 * 28 * 28)
    cfg.data = DataConfig(train_path="", max_prompt_tokens=8192)
    cfg.bootstrap = BootstrapConfig(enabled=False)
    cfg.recycle = RecycleConfig(mixed_groups_only=False)
    cfg.rollout = RolloutConfig(backend="vllm", prompts_per_epoch=64, n_samples=8, temperature=1.0, top_p=1.0,
                                balance_sources=False,
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
    """`make learn`: the tiny default run long enough to learn (under 30 minutes on 2
    cores): twelve epochs of 256 prompts, and a larger held-out set so that a 10-point
    gain is well outside its noise. Same model, warm start and stages as tiny-cpu: from
    the 170-step warm start twelve such epochs took held-out accuracy from 0.368 to
    0.528-0.535 for seeds 42 and 1 (docs/tiny-default.md)."""
    cfg = SparkConfig(preset="tiny-cpu-learn", epochs=12)
    cfg.rollout = dataclasses.replace(cfg.rollout, prompts_per_epoch=256)
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
        raise ConfigError(f"train.micro_batch_size ({train.micro_batch_size}) and train.train_batch_size "
                         f"({train.train_batch_size}) must be positive")
    if train.micro_batch_tokens < 0:
        raise ConfigError(f"train.micro_batch_tokens ({train.micro_batch_tokens}) must be 0 (off) or positive")
    if train.train_batch_size % per_micro_round:
        raise ConfigError(
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


def main(argv=None) -> int:
    """`python -m spark_core.config [--preset NAME]`: every field, its value in the preset, what it does."""
    import argparse
    import textwrap

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--preset", default="tiny-cpu", choices=PRESETS)
    args = ap.parse_args(argv)
    for key, value, help_text in field_docs(preset(args.preset)):
        print(f"{key} = {json.dumps(value)}")
        print(textwrap.fill(help_text, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
