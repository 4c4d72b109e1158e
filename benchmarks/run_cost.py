"""Cost of a whole SPARK run on Flyte, per design: wall time, GPU-hours, overhead.

A simulator of a full ViRL39K run (about 38.9k prompts, 64 prompts x 8 samples per
SPARK step, two GRPO passes per step: the problems, then the recycled prompts rolled
out with the just-updated policy; an evaluation every N steps) under three designs:

  today     one pod per stage: 8 rollout pods (1 GPU, vLLM), a reward pod, an 8-GPU
            DeepSpeed update pod per pass, checkpoints and ~100 GB of ZeRO state through
            object storage between them (workflows/spark.py, mode "dag")
  segment   one 8-GPU node runs K SPARK steps with vLLM (sleep mode) and the trainer
            colocated, weights synced in memory; ZeRO state on a shared volume between
            segments (workflows/spark.py, mode "segment")
  colocated one long-lived colocated trainer for the whole run (verl/EasyR1/OpenRLHF
            hybrid engine): the reference the others are compared with

This is arithmetic, not a measurement. Every fixed and variable cost is a named item
with an optimistic and a conservative value and where it comes from (COSTS). Compute
is calibrated on EasyR1's published Qwen2.5-VL-7B GRPO figures on 8 x H100
(hiyouga/EasyR1, assets/baselines.md): v0.3.2 reports 1600-2000 tokens/s per GPU over
a whole colocated step (120-145 s for 512 prompts x 5 samples), v0.3.0 1200-1400
tokens/s per GPU (170-190 s). A step's tokens divided by that rate is the colocated
step time; the share of it spent generating is an assumption (EasyR1 does not
publish the split).

"overhead" is the share of GPU time that is not generation, training or evaluation
compute; "x colocated" is GPU-hours over the colocated trainer's GPU-hours.

    python -m benchmarks.run_cost                      # 7b-8xh100, K sweep, chosen K
    python -m benchmarks.run_cost --case conservative --steps 300 --eval-every 10
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from spark_core.config import preset

GB = 1e9
VIRL39K_PROMPTS = 38_900  # "about 38.9k prompts" (ViRL39K, the SPARK paper's training set)
# (name, lm_params, all_params): as in benchmarks/step_time_estimate.py
MODELS = {"7b-8xh100": ("Qwen2.5-VL-7B-Instruct", 7.6e9, 8.3e9),
          "32b-16xh100": ("Qwen2.5-VL-32B-Instruct", 32.8e9, 33.5e9)}
EASYR1 = "hiyouga/EasyR1 assets/baselines.md"


@dataclass(frozen=True)
class Costs:
    """Every input of the model. Times in seconds, rates in GB/s or tokens/s."""

    label: str
    # ---- work per step (token counts)
    prompt_tokens: int  # text + vision tokens of a problem prompt
    mean_response: int  # mean generated tokens
    recycled_extra: float  # a recycled prompt quotes a response: extra prompt tokens / mean_response
    # ---- compute, calibrated on EasyR1
    step_tokens_per_gpu_s: float  # tokens (prompt + response) per GPU per second over a colocated step
    small_batch_efficiency: float  # our 512-sequence step vs EasyR1's 2560: less concurrency per engine
    gen_share: float  # share of a colocated step spent generating (rest: log-probs, update)
    # ---- fixed costs of a GPU pod
    node_latency_s: float  # propeller notices a finished node and launches the next
    pod_start_s: float  # schedule + container start, image on the node
    image_pull_s: float  # pulling the image onto a node that lacks it (averaged per pod)
    trainer_init_s: float  # torchrun, imports, NCCL, deepspeed.initialize (weights excluded)
    vllm_start_s: float  # engine start once weights are on the GPU: profiling, CUDA graphs
    # ---- data movement
    storage_gb_s: float  # object storage <-> pod
    volume_gb_s: float  # shared volume (RWX PVC: FSx for Lustre, Filestore) <-> pod
    sync_s: float  # in-memory weight sync trainer -> vLLM incl. sleep/wake, per update
    light_pod_s: float  # a CPU pod (select, reward, recycle, queue, log): start + work


# source of every Costs field, printed with the table
SOURCES = {
    "prompt_tokens": "assumption: ViRL39K question + one image at max_pixels 1024*28*28 (<=1024 vision tokens)",
    "mean_response": "assumption; the 7b preset caps responses at max_new_tokens=768",
    "recycled_extra": "assumption: judge/reflection prompts quote one or two earlier responses",
    "step_tokens_per_gpu_s": f"{EASYR1}: 7B on 8xH100, v0.3.2 1600-2000, v0.3.0 1200-1400 tokens/s/GPU",
    "small_batch_efficiency": "assumption: 512 sequences over 4 TP-2 engines = 128 in flight per engine",
    "gen_share": "assumption (not published by EasyR1): generation ~half of a hybrid-engine step",
    "node_latency_s": "flytepropeller workflow-reeval-duration 10 s (flyte_notes.md); optimistic: event-driven",
    "pod_start_s": "assumption: Kubernetes schedule + container start on a warm GPU node",
    "image_pull_s": "assumption: a ~15 GB CUDA image at ~125 MB/s on a cold node, averaged over pods",
    "trainer_init_s": "assumption: torchrun + NCCL init + deepspeed.initialize of a 7B ZeRO-3 model",
    "vllm_start_s": "vllm#11005 (14 s, 10 s CUDA graphs), vllm#20264 (34 s with cache, 59 s to first token)",
    "storage_gb_s": "Run:ai streamer 16.6 GB in 14.3 s from GP3; HF loader 48 s (scale_notes.md)",
    "volume_gb_s": "assumption: RWX file system, 8 ranks writing their shards at once (FSx for Lustre class)",
    "sync_s": "verl#116 0.55 s in-process 7B sync; vllm#5723 5-6 s over gloo; plus sleep/wake",
    "light_pod_s": "assumption: CPU pod start + a few seconds of work",
}

OPTIMISTIC = Costs("optimistic", prompt_tokens=600, mean_response=450, recycled_extra=0.5,
                   step_tokens_per_gpu_s=2000, small_batch_efficiency=1.0, gen_share=0.5,
                   node_latency_s=2, pod_start_s=20, image_pull_s=0, trainer_init_s=45, vllm_start_s=20,
                   storage_gb_s=1.2, volume_gb_s=4.0, sync_s=3, light_pod_s=12)
CONSERVATIVE = Costs("conservative", prompt_tokens=1000, mean_response=768, recycled_extra=0.5,
                     step_tokens_per_gpu_s=1200, small_batch_efficiency=0.75, gen_share=0.55,
                     node_latency_s=10, pod_start_s=60, image_pull_s=60, trainer_init_s=90, vllm_start_s=60,
                     storage_gb_s=0.35, volume_gb_s=1.0, sync_s=8, light_pod_s=25)
CASES = {c.label: c for c in (OPTIMISTIC, CONSERVATIVE)}


@dataclass(frozen=True)
class Run:
    """The shape of a run, from a preset plus the run's length."""

    gpus: int  # GPUs of the training node(s); the segment and colocated designs use the same
    rollout_pods: int  # today's design: one vLLM pod per shard
    gpus_per_rollout_pod: int
    seqs: int  # prompts x samples per pass
    steps: int  # SPARK steps (two passes each)
    eval_every: int  # steps between evaluations
    eval_prompts: int  # held-out problems + judge prompts per evaluation, one greedy answer each
    eval_response: int  # mean generated tokens of an evaluation answer
    ckpt_gb: float  # bf16 Hugging Face checkpoint
    state_gb: float  # ZeRO checkpoint: fp32 master weights + two Adam moments


def run_of(preset_name: str, steps: int | None = None, eval_every: int = 20, eval_prompts: int = 2000,
           eval_response: int = 600, prompts: int = VIRL39K_PROMPTS) -> Run:
    cfg = preset(preset_name)
    _, _, params = MODELS[preset_name]
    r, c = cfg.rollout, cfg.cluster
    return Run(gpus=c.update.nnodes * c.update.nproc_per_node, rollout_pods=max(1, r.n_shards),
               gpus_per_rollout_pod=r.tensor_parallel_size, seqs=r.prompts_per_epoch * r.n_samples,
               steps=steps or math.ceil(prompts / r.prompts_per_epoch), eval_every=eval_every,
               eval_prompts=eval_prompts, eval_response=eval_response,
               ckpt_gb=2 * params / GB, state_gb=12 * params / GB)


# ---------------------------------------------------------------- compute


def pass_tokens(run: Run, c: Costs, recycled: bool) -> float:
    prompt = c.prompt_tokens + (c.recycled_extra * c.mean_response if recycled else 0)
    return run.seqs * (prompt + c.mean_response)


def colocated_pass_s(run: Run, c: Costs, recycled: bool) -> tuple[float, float]:
    """(generation, training) seconds of one pass on the run's GPUs, colocated."""
    total = pass_tokens(run, c, recycled) / (c.step_tokens_per_gpu_s * c.small_batch_efficiency * run.gpus)
    return total * c.gen_share, total * (1 - c.gen_share)


def eval_gen_s(run: Run, c: Costs) -> float:
    """One evaluation on the run's GPUs: generation at the same per-token rate."""
    tokens = run.eval_prompts * (c.prompt_tokens + run.eval_response)
    return tokens / (c.step_tokens_per_gpu_s * c.small_batch_efficiency * run.gpus) * c.gen_share


def n_evals(run: Run) -> int:
    return run.steps // run.eval_every


def compute_gpu_s(run: Run, c: Costs) -> float:
    """GPU-seconds every design must spend: generation + training + evaluation."""
    per_step = sum(sum(colocated_pass_s(run, c, rec)) for rec in (False, True))
    return (run.steps * per_step + n_evals(run) * eval_gen_s(run, c)) * run.gpus


# ---------------------------------------------------------------- designs


@dataclass
class Result:
    design: str
    wall_s: float
    gpu_s: float
    compute_gpu_s: float
    items: dict[str, float]  # GPU-seconds per cost item, for the breakdown
    nodes: int = 0  # Flyte nodes in the run

    @property
    def overhead(self) -> float:
        return 1 - self.compute_gpu_s / self.gpu_s


def colocated(run: Run, c: Costs) -> Result:
    """One job: start once, then every step back to back; state saved at the end."""
    g = run.gpus
    start = c.pod_start_s + c.image_pull_s + c.trainer_init_s + 2 * run.ckpt_gb / c.storage_gb_s + c.vllm_start_s
    steps = run.steps * (sum(sum(colocated_pass_s(run, c, rec)) for rec in (False, True)) + 2 * c.sync_s)
    evals = n_evals(run) * eval_gen_s(run, c)
    end = (run.ckpt_gb + run.state_gb) / c.storage_gb_s
    wall = start + steps + evals + end
    items = {"start (pod, image, init, weights, vLLM)": start * g, "weight sync": run.steps * 2 * c.sync_s * g,
             "final save": end * g}
    return Result("colocated trainer", wall, wall * g, compute_gpu_s(run, c), items, nodes=1)


def segment(run: Run, c: Costs, k: int, resume_every: int = 0, volume: bool = True) -> Result:
    """ceil(steps / K) segment nodes, each on `gpus` GPUs: start, load state from the
    shared volume, K colocated steps (+ evals that fall in it), save state; the HF
    checkpoint of each segment is its node output (object storage)."""
    g = run.gpus
    n_seg = math.ceil(run.steps / k)
    bw = c.volume_gb_s if volume else c.storage_gb_s
    start = c.pod_start_s + c.image_pull_s + c.trainer_init_s + c.vllm_start_s
    load = (2 * run.ckpt_gb + run.state_gb) / bw  # policy + reference + ZeRO state
    save = run.state_gb / bw + run.ckpt_gb / c.storage_gb_s  # state to the volume, policy as the node output
    resume_saves = (k - 1) // resume_every if resume_every else 0  # mid-segment resume checkpoints
    resume = resume_saves * run.state_gb / c.volume_gb_s
    per_seg_fixed = start + load + save + resume
    step = sum(sum(colocated_pass_s(run, c, rec)) for rec in (False, True)) + 2 * c.sync_s
    evals = n_evals(run) * eval_gen_s(run, c)
    gpu_wall = n_seg * per_seg_fixed + run.steps * step + evals
    # between segments: propeller latency and a log pod on the critical path (no GPU held)
    between = n_seg * (2 * c.node_latency_s + c.light_pod_s)
    items = {"pod start + image pull": n_seg * (c.pod_start_s + c.image_pull_s) * g,
             "trainer init + vLLM start": n_seg * (c.trainer_init_s + c.vllm_start_s) * g,
             "load policy/ref/state": n_seg * load * g, "save state + policy": n_seg * save * g,
             "resume checkpoints": n_seg * resume * g, "weight sync": run.steps * 2 * c.sync_s * g}
    return Result(f"segment K={k}", gpu_wall + between, gpu_wall * g, compute_gpu_s(run, c), items,
                  nodes=n_seg * 2)


def today(run: Run, c: Costs) -> Result:
    """Per pass: rollout pods (download policy, start vLLM, generate), a reward pod, the
    update pod (download policy+ref+state, init, train, save, upload); light pods and
    propeller latency between them. Evaluation on one rollout-sized pod every N steps."""
    g = run.gpus
    rg = run.rollout_pods * run.gpus_per_rollout_pod
    wall = gpu = 0.0
    items = {k: 0.0 for k in ("pod start + image pull", "download/upload checkpoints", "vLLM start",
                              "trainer init", "ZeRO state through object storage")}
    pod = c.pod_start_s + c.image_pull_s
    for rec in (False, True):
        gen, train = colocated_pass_s(run, c, rec)
        gen_pod = gen * g / rg  # the same GPU-seconds of generation on the rollout pods
        roll = pod + run.ckpt_gb / c.storage_gb_s + c.vllm_start_s + gen_pod
        state_io = 2 * run.state_gb / c.storage_gb_s
        upd = pod + 2 * run.ckpt_gb / c.storage_gb_s + c.trainer_init_s + train + run.ckpt_gb / c.storage_gb_s + state_io
        wall += roll + upd + c.light_pod_s * 2 + c.node_latency_s * 4  # rollout, reward, (recycle|queue), update
        gpu += roll * rg + upd * g
        items["pod start + image pull"] += pod * (rg + g)
        items["download/upload checkpoints"] += run.ckpt_gb / c.storage_gb_s * rg + 3 * run.ckpt_gb / c.storage_gb_s * g
        items["vLLM start"] += c.vllm_start_s * rg
        items["trainer init"] += c.trainer_init_s * g
        items["ZeRO state through object storage"] += state_io * g
    wall += c.light_pod_s * 2 + c.node_latency_s * 2  # select prompts, log the epoch
    ev_pod = pod + run.ckpt_gb / c.storage_gb_s + c.vllm_start_s
    ev = ev_pod + eval_gen_s(run, c) * g / run.gpus_per_rollout_pod  # one eval pod
    wall_run = run.steps * wall + n_evals(run) * (ev + c.node_latency_s)
    gpu_run = run.steps * gpu + n_evals(run) * ev * run.gpus_per_rollout_pod
    items = {k: v * run.steps for k, v in items.items()}
    items["eval pod start + load"] = n_evals(run) * ev_pod * run.gpus_per_rollout_pod
    return Result("today: pod per stage", wall_run, gpu_run, compute_gpu_s(run, c), items,
                  nodes=run.steps * 12 + n_evals(run))


def pick_k(run: Run, cases, ks=(1, 2, 4, 8, 16, 32, 64), target: float = 0.20, resume_every: int = 8) -> int:
    """Smallest K whose overhead is at most `target` in every case (shorter segments
    publish the policy more often and hold fewer steps per Flyte node); the largest K
    if none is."""
    for k in ks:
        if all(segment(run, c, k, resume_every).overhead <= target for c in cases):
            return k
    return ks[-1]


# ---------------------------------------------------------------- printing


def _row(r: Result, base: Result) -> str:
    return (f"| {r.design} | {r.wall_s / 3600:.1f} | {r.gpu_s / 3600:.0f} | {r.overhead:.0%} | "
            f"{r.gpu_s / base.gpu_s:.2f}x |")


def table(run: Run, c: Costs, k: int, resume_every: int) -> list[str]:
    base = colocated(run, c)
    rows = [today(run, c), segment(run, c, k, resume_every), base]
    out = ["| design | wall (h) | GPU-hours | overhead | x colocated |", "|---|---:|---:|---:|---:|"]
    return out + [_row(r, base) for r in rows]


def sweep(run: Run, c: Costs, ks, resume_every: int) -> list[str]:
    base = colocated(run, c)
    out = ["| K (steps per segment) | segments | wall (h) | GPU-hours | overhead | x colocated |",
           "|---:|---:|---:|---:|---:|---:|"]
    for k in ks:
        r = segment(run, c, k, resume_every)
        out.append(f"| {k} | {math.ceil(run.steps / k)} | {r.wall_s / 3600:.1f} | {r.gpu_s / 3600:.0f} | "
                   f"{r.overhead:.0%} | {r.gpu_s / base.gpu_s:.2f}x |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="7b-8xh100", choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=0, help="SPARK steps (default: one pass over ~38.9k prompts)")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--k", type=int, default=0, help="steps per segment (default: picked from the sweep)")
    ap.add_argument("--resume-every", type=int, default=8, help="steps between mid-segment resume checkpoints")
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    args = ap.parse_args(argv)
    run = run_of(args.preset, steps=args.steps or None, eval_every=args.eval_every)
    ks = (1, 2, 4, 8, 16, 32, 64)
    name = MODELS[args.preset][0]
    print(f"{args.preset} ({name}): {run.steps} SPARK steps of {run.seqs} sequences x 2 passes, eval every "
          f"{run.eval_every} steps ({run.eval_prompts} prompts); {run.gpus} training GPUs, today's rollout "
          f"{run.rollout_pods} pods x {run.gpus_per_rollout_pod} GPU; checkpoint {run.ckpt_gb:.1f} GB, ZeRO state "
          f"{run.state_gb:.0f} GB; resume checkpoint every {args.resume_every} steps inside a segment")
    labels = args.case or ["optimistic", "conservative"]
    k = args.k or pick_k(run, [CASES[x] for x in labels], ks, resume_every=args.resume_every)
    for label in labels:
        c = CASES[label]
        gen, train = colocated_pass_s(run, c, False)
        print(f"\n## {label}: colocated policy pass {gen:.0f} s generation + {train:.0f} s training; "
              f"K = {k} (smallest with overhead <= 20% in every case)\n")
        print("\n".join(table(run, c, k, args.resume_every)))
        print()
        print("\n".join(sweep(run, c, ks, args.resume_every)))
        seg = segment(run, c, k, args.resume_every)
        print(f"\nsegment K={k} overhead, GPU-hours per item: "
              + ", ".join(f"{n} {v / 3600:.1f}" for n, v in seg.items.items()))
        t = today(run, c)
        print("today's overhead, GPU-hours per item: " + ", ".join(f"{n} {v / 3600:.1f}" for n, v in t.items.items()))
    print("\n| cost item | optimistic | conservative | source |\n|---|---:|---:|---|")
    for f in fields(Costs):
        if f.name == "label":
            continue
        print(f"| {f.name} | {getattr(OPTIMISTIC, f.name)} | {getattr(CONSERVATIVE, f.name)} | {SOURCES[f.name]} |")


if __name__ == "__main__":
    main()
