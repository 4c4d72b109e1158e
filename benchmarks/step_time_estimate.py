"""Back-of-the-envelope time of one SPARK pass on the cluster, from a preset's config.

This is arithmetic, not a measurement: the sizes (prompts, samples, max new tokens,
GPUs, train batch, ZeRO stage, KL) come from the preset in spark_core/config.py, and
everything the config cannot know (token lengths, vLLM throughput, MFU, storage
bandwidth, pod start-up) is an explicit assumption, given for an optimistic and a
conservative case.

A "pass" is what RL frameworks call a step: roll out every prompt of the batch G
times, score, and run the GRPO update over those samples. A workflow epoch runs two
passes (the problems, then the recycled prompts) plus evaluation.

    python -m benchmarks.step_time_estimate                 # 7b-8xh100
    python -m benchmarks.step_time_estimate --preset 32b-16xh100
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spark_core.config import optimizer_steps_per_pass, preset

GB = 1e9

# Parameters of the checkpoints the GPU presets are meant for. FLOPs use the language
# model (the vision tower, ~0.7B, only sees the image patches); checkpoint and
# optimizer-state sizes use every parameter.
MODELS = {
    "7b-8xh100": {"name": "Qwen2.5-VL-7B-Instruct", "lm_params": 7.6e9, "all_params": 8.3e9},
    "32b-16xh100": {"name": "Qwen2.5-VL-32B-Instruct", "lm_params": 32.8e9, "all_params": 33.5e9},
}

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM
REFERENCE_LM_PARAMS = 7.6e9  # the vLLM rates below are assumed for this size

# EasyR1 v0.3.2 (assets/baselines.md), Qwen2.5-VL-7B GRPO on Geometry3k, 8 x H100:
# 120-145 s a step of 512 prompts x 5 samples, 1600-2000 tokens/s per GPU over the step.
EASYR1_TOKENS_PER_GPU_S = (2000, 1600)
EASYR1_GPUS = 8


@dataclass
class Assumptions:
    label: str
    prompt_tokens: int  # text + vision tokens of a problem prompt
    mean_response: int  # mean generated tokens (the preset caps it at max_new_tokens)
    recycled_extra: float  # extra prompt tokens of a recycled prompt, as a share of mean_response
    vllm_tokens_per_s: float  # output tokens/s of one vLLM engine at ~64 concurrent sequences
    mfu: float  # model FLOPs utilisation of the DeepSpeed update
    padding: float  # padded/real tokens in the trainer's micro-batches
    storage_gb_s: float  # object storage <-> pod, per pod
    disk_gb_s: float  # local disk of a pod
    gpu_pod_start_s: float  # schedule + start a GPU pod (image already on the node)
    light_pod_start_s: float  # the same for a CPU pod
    vllm_start_s: float  # engine start after the download: weights to GPU, compile, CUDA graphs
    trainer_init_s: float  # torchrun + imports + NCCL + models to GPU + deepspeed.initialize
    verify_s: float  # math_verify over one pass's samples


OPTIMISTIC = Assumptions("optimistic", prompt_tokens=600, mean_response=450, recycled_extra=0.5,
                         vllm_tokens_per_s=3000, mfu=0.40, padding=1.15, storage_gb_s=3.0, disk_gb_s=4.0,
                         gpu_pod_start_s=20, light_pod_start_s=10, vllm_start_s=45, trainer_init_s=45,
                         verify_s=5)
CONSERVATIVE = Assumptions("conservative", prompt_tokens=1000, mean_response=768, recycled_extra=0.5,
                           vllm_tokens_per_s=2000, mfu=0.20, padding=1.4, storage_gb_s=1.0, disk_gb_s=2.0,
                           gpu_pod_start_s=60, light_pod_start_s=20, vllm_start_s=90, trainer_init_s=90,
                           verify_s=15)


def estimate(preset_name: str, a: Assumptions, recycled: bool = False) -> dict[str, float]:
    """Seconds per item of one pass (policy pass, or the recycled pass when recycled=True)."""
    cfg = preset(preset_name)
    m = MODELS[preset_name]
    r, t, c = cfg.rollout, cfg.train, cfg.cluster
    prompts = (cfg.recycle.recycled_batch or r.prompts_per_epoch) if recycled else r.prompts_per_epoch
    seqs = prompts * r.n_samples
    resp = min(a.mean_response, r.max_new_tokens)
    prompt = a.prompt_tokens + (a.recycled_extra * resp if recycled else 0)
    tokens = seqs * (prompt + resp)
    engines = max(1, r.n_shards)  # one engine per rollout pod (tensor_parallel_size GPUs each)
    train_gpus = c.update.nnodes * c.update.nproc_per_node
    ckpt_gb = 2 * m["all_params"] / GB  # bf16 safetensors
    # ZeRO checkpoint: fp32 master weights + two fp32 Adam moments, 12 B/param
    state_gb = 12 * m["all_params"] / GB

    out: dict[str, float] = {}
    # ---- rollout: one pod per shard, in parallel; the pass waits for all of them
    out["rollout: GPU pod start"] = a.gpu_pod_start_s
    out["rollout: download policy"] = ckpt_gb / a.storage_gb_s
    out["rollout: vLLM engine start"] = a.vllm_start_s
    # decoding is memory-bound: a larger model on the same engine is slower about in
    # proportion to its weights (the assumed rate is for the 7B model)
    rate = a.vllm_tokens_per_s * REFERENCE_LM_PARAMS / m["lm_params"] * r.tensor_parallel_size
    out["rollout: generation"] = seqs / engines * resp / rate
    # ---- reward (CPU pod)
    out["reward: pod start + verify"] = a.light_pod_start_s + a.verify_s
    # ---- update: one Elastic pod (or PyTorchJob)
    lm = m["lm_params"]
    per_token = (6 + (2 if t.gradient_checkpointing else 0)) * lm  # fwd+bwd (+ recompute)
    per_token += 2 * lm if cfg.train.kl_coef > 0 else 0  # reference forward
    # old log-probs are vLLM's sampled log-probs: no extra trainer forward
    flops = per_token * tokens * a.padding * t.ppo_epochs
    out["update: GPU pod start"] = a.gpu_pod_start_s
    # every update pod fetches the policy and the reference model and its nodes' share
    # of the optimizer state; the first pod also writes the consolidated policy
    pod_state_gb = state_gb / c.update.nnodes
    out["update: download policy+ref+state"] = (2 * ckpt_gb + pod_state_gb) / a.storage_gb_s
    out["update: init + load models/state"] = a.trainer_init_s + pod_state_gb / a.disk_gb_s
    out["update: GRPO compute"] = flops / (train_gpus * H100_BF16_PEAK * a.mfu)
    out["update: save policy+state"] = (ckpt_gb + pod_state_gb) / a.disk_gb_s
    out["update: upload policy+state"] = (ckpt_gb + pod_state_gb) / a.storage_gb_s
    out["_tokens"] = tokens
    out["_flops"] = flops
    out["_optimizer_steps"] = optimizer_steps_per_pass(seqs, t.train_batch_size) * t.ppo_epochs
    out["_ckpt_gb"] = ckpt_gb
    out["_state_gb"] = state_gb
    return out


def pass_total(e: dict[str, float]) -> float:
    return sum(v for k, v in e.items() if not k.startswith("_"))


def colocated(e: dict[str, float]) -> float:
    """The same work in one long-lived colocated trainer (e.g. a Ray/veRL-style job): no
    pods, downloads, engine starts or checkpoints between stages; weights synced in GPU
    memory (a few seconds)."""
    return e["rollout: generation"] + e["update: GRPO compute"] + 3.0 + 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="7b-8xh100", choices=sorted(MODELS))
    args = ap.parse_args()
    cfg = preset(args.preset)
    m = MODELS[args.preset]
    r, t, c = cfg.rollout, cfg.train, cfg.cluster
    cases = (OPTIMISTIC, CONSERVATIVE)
    est = {a.label: estimate(args.preset, a) for a in cases}
    rec = {a.label: estimate(args.preset, a, recycled=True) for a in cases}

    print(f"preset {args.preset}: {m['name']}, {r.prompts_per_epoch} prompts x {r.n_samples} samples, "
          f"max_new_tokens {r.max_new_tokens}, {r.n_shards} rollout pods x {r.tensor_parallel_size} GPU, "
          f"update {c.update.nnodes} x {c.update.nproc_per_node} GPU, ZeRO-{t.zero_stage}, "
          f"train batch {t.train_batch_size}, grad ckpt {t.gradient_checkpointing}, kl {t.kl_coef}")
    print()
    print("| assumption | " + " | ".join(a.label for a in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    rows = [("prompt tokens (text + vision)", "prompt_tokens", "{:.0f}"),
            ("mean response tokens", "mean_response", "{:.0f}"),
            ("vLLM output tokens/s per engine", "vllm_tokens_per_s", "{:.0f}"),
            ("update MFU", "mfu", "{:.0%}"),
            ("padding factor", "padding", "{:.2f}"),
            ("object storage GB/s per pod", "storage_gb_s", "{:.1f}"),
            ("local disk GB/s", "disk_gb_s", "{:.1f}"),
            ("GPU / CPU pod start (s)", None, None),
            ("vLLM engine start (s)", "vllm_start_s", "{:.0f}"),
            ("trainer init (s)", "trainer_init_s", "{:.0f}")]
    for label, attr, fmt in rows:
        if attr is None:
            vals = [f"{a.gpu_pod_start_s:.0f} / {a.light_pod_start_s:.0f}" for a in cases]
        else:
            vals = [fmt.format(getattr(a, attr)) for a in cases]
        print(f"| {label} | " + " | ".join(vals) + " |")
    print()
    e0 = est[cases[0].label]
    print(f"checkpoint {e0['_ckpt_gb']:.1f} GB (bf16), ZeRO optimizer state {e0['_state_gb']:.0f} GB; "
          f"{e0['_optimizer_steps']:.0f} optimizer steps per pass")
    print()
    print("| one pass (seconds) | " + " | ".join(a.label for a in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    print("| tokens in the update (prompt + response) | "
          + " | ".join(f"{est[a.label]['_tokens'] / 1e3:.0f}k" for a in cases) + " |")
    print("| update FLOPs | " + " | ".join(f"{est[a.label]['_flops']:.2e}" for a in cases) + " |")
    for k in (k for k in e0 if not k.startswith("_")):
        print(f"| {k} | " + " | ".join(f"{est[a.label][k]:.0f}" for a in cases) + " |")
    print("| **policy pass on Flyte** | " + " | ".join(f"**{pass_total(est[a.label]):.0f}**" for a in cases)
          + " |")
    print("| recycled pass on Flyte (longer prompts) | "
          + " | ".join(f"{pass_total(rec[a.label]):.0f}" for a in cases) + " |")
    print("| same pass, colocated trainer (compute + sync) | "
          + " | ".join(f"{colocated(est[a.label]):.0f}" for a in cases) + " |")
    if args.preset == "7b-8xh100":
        print("| same tokens at EasyR1's measured 2000 / 1600 tokens/s/GPU on 8 GPUs | "
              + " | ".join(f"{est[a.label]['_tokens'] / (rate * EASYR1_GPUS):.0f}"
                           for a, rate in zip(cases, EASYR1_TOKENS_PER_GPU_S)) + " |")
    epoch = {a.label: pass_total(est[a.label]) + pass_total(rec[a.label]) + 2 * a.light_pod_start_s for a in cases}
    print("| epoch = 2 passes + select/log pods, without eval | "
          + " | ".join(f"{epoch[a.label]:.0f} ({epoch[a.label] / 60:.1f} min)" for a in cases) + " |")
    compute = {a.label: est[a.label]["rollout: generation"] + est[a.label]["update: GRPO compute"] for a in cases}
    print("| share of the Flyte pass that is generation + GRPO compute | "
          + " | ".join(f"{compute[a.label] / pass_total(est[a.label]):.0%}" for a in cases) + " |")


if __name__ == "__main__":
    main()
