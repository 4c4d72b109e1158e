"""GPU smoke of the real spark_core path, in one command, from the project root:
`python -m benchmarks.gpu_smoke`.

On one H100/H200 it builds a randomly initialised Qwen2.5-VL at a real width (the 3B or
7B text config, written below; no download), with layers cut to fit a few minutes, and
runs what an epoch runs, through the project's own code:

  GRPOTrainer (DeepSpeed, bf16, NCCL, world size 1: ZeRO-1, as any one-rank update runs; --zero3
  keeps the presets' ZeRO-3; it builds policy and reference)
  -> HF rollouts of synthetic image prompts on the trainer's live policy (spark_core.rollout.hf)
  -> reward (spark_core.reward.score_batch) -> recycling (spark_core.recycle.recycle)
  -> a GRPO pass -> rollouts of the recycled prompts -> a second pass that crashes after
     its first optimizer step and resumes from that step's checkpoint.

It prints one table: rollout tokens/s, update tokens/s and MFU under two conventions (this
project's, and verl's / EasyR1's, which their published MFU figures use), peak GPU memory, the
rollout-vs-trainer log-prob gap, KL and clip fraction at the first step, and whether every
loss was finite. `--toy` (automatic without CUDA) runs the same path on the embedded tiny
model on a CPU, in about a minute; tests/test_gpu_smoke.py runs it in CI.

A randomly initialised model never writes a correct \\boxed{} answer, so every reward would
be 0 and every advantage 0 (the update would be a no-op). One response per prompt is
therefore replaced by the prompt's worked solution, scored by the same verifier, with its
behaviour log-probs computed by the trainer's model; the log-prob gap is measured on the
sampled responses only.

It imports no flytekit. On a bare GPU box the packages it needs beyond torch and
transformers travel as wheels: see benchmarks/fetch_smoke_wheels.sh and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

# Qwen2.5-VL text configs (config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct)
TEXT_CONFIGS = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
}
# the vision tower is the same in both (its merger projects to the text width)
VISION_CONFIG = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=112, hidden_act="silu")
FULL_ATTENTION_BLOCKS = (7, 15, 23, 31)

# dense bf16 peak of the card, for MFU
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="the embedded tiny model on CPU (automatic without CUDA)")
    p.add_argument("--size", choices=sorted(TEXT_CONFIGS), default="3b", help="text config (default 3b)")
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers kept (default: 18 of 36 for 3b, 4 of 28 for 7b, which fit an H100; "
                        "an H200 holds 7b with 8)")
    p.add_argument("--vision-depth", type=int, default=16, help="vision blocks kept (of 32; default 16)")
    p.add_argument("--prompts", type=int, default=None, help="image prompts (default 16; toy 4)")
    p.add_argument("--samples", type=int, default=None, help="rollouts per prompt G (default 8; toy 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="response length (default 128; toy 12)")
    p.add_argument("--micro", type=int, default=None, help="micro-batch size (default 8; toy 4)")
    p.add_argument("--train-batch", type=int, default=None, help="samples per optimizer step (default 32; toy 8)")
    p.add_argument("--image-size", type=int, default=None, help="synthetic image side in pixels (default 448; toy 112)")
    p.add_argument("--zero3", action="store_true",
                   help="ZeRO-3 on the one GPU, as the multi-GPU presets run (default: ZeRO-1, what a one-rank "
                        "update runs)")
    p.add_argument("--torch-adam", action="store_true",
                   help="torch's AdamW instead of DeepSpeed's fused Adam (automatic where nvcc is missing)")
    p.add_argument("--workdir", default=None, help="where the model and checkpoints go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


# ---- the model ------------------------------------------------------------------------


def real_width_config(size: str, layers: int, vision_depth: int, tokenizer):
    """Qwen2.5-VL's config at `size`, cut to `layers` text layers and `vision_depth` vision
    blocks, with the special token ids of `tokenizer` (Qwen's own vocabulary)."""
    from transformers import Qwen2_5_VLConfig

    from spark_core.model.token_ids import TokenIds
    from spark_core.model.tokenizer import QWEN_PADDED_VOCAB_SIZE

    ids = TokenIds.from_tokenizer(tokenizer)

    text = dict(TEXT_CONFIGS[size])
    tie = text.pop("tie_word_embeddings")
    full = text["num_hidden_layers"]
    text.update(num_hidden_layers=min(layers, full), vocab_size=QWEN_PADDED_VOCAB_SIZE, max_position_embeddings=32768,
                rms_norm_eps=1e-6, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=ids.endoftext, eos_token_id=ids.im_end, pad_token_id=ids.pad)
    depth = min(vision_depth, VISION_CONFIG["depth"])
    vision = dict(VISION_CONFIG, depth=depth, out_hidden_size=text["hidden_size"],
                  fullatt_block_indexes=[i for i in FULL_ATTENTION_BLOCKS if i < depth] or [depth - 1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie,
                           image_token_id=ids.image, video_token_id=ids.video,
                           vision_start_token_id=ids.vision_start, vision_end_token_id=ids.vision_end)
    return cfg, full


def build_real_width(out_dir: str, size: str, layers: int, vision_depth: int, model_cfg, device: str) -> dict:
    """A Hugging Face directory with a randomly initialised real-width Qwen2.5-VL (bf16)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spark_core.model.loading import save_checkpoint
    from spark_core.model.tiny import build_processor
    from spark_core.model.token_ids import TokenIds
    from spark_core.model.tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    ids = TokenIds.from_tokenizer(tokenizer)
    config, full_layers = real_width_config(size, layers, vision_depth, tokenizer)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):  # initialised on the GPU: seconds instead of minutes
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = list(ids.stops)
    model.generation_config.pad_token_id = ids.pad
    save_checkpoint(model, build_processor(tokenizer, model_cfg), out_dir)
    info = {"text_layers": f"{config.text_config.num_hidden_layers}/{full_layers}",
            "vision_blocks": f"{config.vision_config.depth}/{VISION_CONFIG['depth']}"}
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return info


def flop_params(module) -> dict:
    """Parameter counts that set the FLOPs per token: decoder (every token), LM head
    (response tokens only: the log-prob pass projects only those), vision (per patch)."""
    inner = module.model
    emb = inner.get_input_embeddings().weight
    total = sum(p.numel() for p in module.parameters())
    vision = sum(p.numel() for p in inner.visual.parameters())
    head = module.lm_head.weight.numel()
    tied = module.lm_head.weight is emb
    decoder = total - vision - emb.numel() - (0 if tied else head)
    return {"total": total, "decoder": decoder, "head": head, "vision": vision}


def partitioned_numel(p) -> int:
    """A parameter's full size, also under ZeRO-3 (where `numel()` is 0)."""
    return int(getattr(p, "ds_numel", 0) or p.numel())


# ---- helpers --------------------------------------------------------------------------


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def trainer_logprobs(trainer, prompts_by_id, rows, micro: int) -> list[list[float]]:
    """The trainer's own log-probs of each row's response (project code: build_batch + response_logprobs)."""
    import torch

    from spark_core.model.logprobs import build_batch, gather_response, response_logprobs

    out: list[list[float]] = []
    for i in range(0, len(rows), micro):
        chunk = rows[i: i + micro]
        batch = build_batch(trainer.processor, [prompts_by_id[r["prompt_id"]] for r in chunk],
                            [r["prompt_token_ids"] for r in chunk], [r["response_token_ids"] for r in chunk])
        batch = batch.to(trainer.dist.device)
        with torch.no_grad():
            lp = response_logprobs(trainer.module, batch)
        out.extend(gather_response(lp.float().cpu(), batch.to("cpu")))
    return out


def plant_worked_solutions(trainer, prompts, rows, micro: int) -> int:
    """Replace sample 0 of every prompt by its worked solution (see the module docstring)."""
    from spark_core.data import worked_solution
    from spark_core.model.token_ids import TokenIds

    tok = trainer.processor.tokenizer
    im_end = TokenIds.from_tokenizer(tok).im_end
    by_id = {p["prompt_id"]: p for p in prompts}
    planted = [r for r in rows if r["sample_index"] == 0]
    for r in planted:
        text = worked_solution(by_id[r["prompt_id"]])
        r.update(response=text, response_token_ids=tok(text)["input_ids"] + [im_end], finish_reason="stop")
    for r, lp in zip(planted, trainer_logprobs(trainer, by_id, planted, micro)):
        r["old_logprobs"] = lp
    return len(planted)


def logprob_gap(trainer, prompts, rows, micro: int) -> dict:
    by_id = {p["prompt_id"]: p for p in prompts}
    ref = trainer_logprobs(trainer, by_id, rows, micro)
    diffs = [abs(a - b) for r, lp in zip(rows, ref) for a, b in zip(r["old_logprobs"], lp)]
    return {"mean": sum(diffs) / max(1, len(diffs)), "max": max(diffs, default=0.0), "tokens": len(diffs)}


def pass_flops(rows: list[dict], params: dict, with_ref: bool, ppo_epochs: int, image_token_id: int) -> float:
    """Model FLOPs of a GRPO pass: 6 per parameter per token for the policy's forward and
    backward, 2 for the reference's forward (recomputation under gradient checkpointing
    is not counted: this is MFU, not hardware utilisation)."""
    per_param = 6 + (2 if with_ref else 0)
    total = 0.0
    for r in rows:
        seq = len(r["prompt_token_ids"]) + len(r["response_token_ids"])
        patches = 4 * list(r["prompt_token_ids"]).count(image_token_id)  # 2x2 patches merge into one token
        total += per_param * (params["decoder"] * seq + params["head"] * len(r["response_token_ids"])
                              + params["vision"] * patches)
    return total * ppo_epochs


def anchor_flops(text_config, seqlens: list[int]) -> float:
    """FLOPs of a training forward and backward over sequences of `seqlens` tokens, counted
    the way verl's and EasyR1's FlopsCounter count them (verl/utils/flops_counter.py, the
    `qwen2_5_vl` entry): 6 per dense parameter per token, with the dense parameters those
    of the decoder's attention projections and MLPs plus the embedding and the LM head
    (vocab x hidden each, tied or not), and 12 x seqlen^2 x head_dim x heads x layers for
    the attention scores and their backward. The vision tower, the reference model, the
    recomputation of gradient checkpointing and the old-log-prob forward are not counted."""
    c = text_config
    hidden, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
    head_dim = hidden // heads
    q = heads * head_dim
    kv = c.num_key_value_heads * head_dim
    mlp = 3 * hidden * c.intermediate_size  # gate, up and down projections
    attn_linear = hidden * (q + 2 * kv + q)  # q, k, v and o projections
    dense = (mlp + attn_linear) * layers + 2 * c.vocab_size * hidden
    return 6.0 * dense * sum(seqlens) + 12.0 * sum(s * s for s in seqlens) * head_dim * heads * layers


def use_torch_adam() -> None:
    """Make the trainer's DeepSpeed config take torch's AdamW. DeepSpeed's fused Adam is a
    CUDA op compiled at first use, which needs nvcc; a bare box with pip wheels has none."""
    import spark_core.train.engine as engine

    build = engine.deepspeed_config

    def with_torch_adam(cfg, world):
        ds = build(cfg, world)
        ds["optimizer"]["params"]["torch_adam"] = True
        return ds

    engine.deepspeed_config = with_torch_adam


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


# ---- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    import torch

    t_start = time.time()
    toy = args.toy or not torch.cuda.is_available()
    pick = lambda value, gpu, cpu: value if value is not None else (cpu if toy else gpu)  # noqa: E731
    n_prompts, G = pick(args.prompts, 16, 4), pick(args.samples, 8, 4)
    max_new, micro, train_batch = pick(args.max_new_tokens, 128, 12), pick(args.micro, 8, 4), pick(args.train_batch, 32, 8)
    layers = args.layers if args.layers is not None else {"3b": 18, "7b": 4}[args.size]
    image_size = pick(args.image_size, 448, 112)

    from spark_core.config import ModelConfig, SparkConfig, TrainConfig
    from spark_core.data import generate
    from spark_core.model.token_ids import TokenIds
    from spark_core.recycle import recycle
    from spark_core.reward.stage import score
    from spark_core.rollout.base import rollout_rows
    from spark_core.rollout.colocated import ColocatedHF
    from spark_core.checkpoint import Checkpoints
    from spark_core.train.callbacks import CrashAfterStep
    from spark_core.train.engine import GRPOTrainer

    work = args.workdir or tempfile.mkdtemp(prefix="spark-smoke-")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "model")
    res: dict = {"mode": "toy (CPU, embedded tiny model)" if toy else "gpu", "workdir": work}

    cfg = SparkConfig()
    if toy:
        cfg.model = ModelConfig(path=model_dir)
        cfg.train = TrainConfig(lr=1e-3, micro_batch_size=micro, train_batch_size=train_batch, zero_stage=3)
    else:
        # the 7b preset's pixel limit: a 448 px image is 256 vision tokens
        cfg.model = ModelConfig(path=model_dir, dtype="bfloat16", attn_implementation="sdpa",
                                max_pixels=1024 * 28 * 28)
        cfg.train = TrainConfig(lr=1e-5, micro_batch_size=micro, train_batch_size=train_batch, zero_stage=3,
                                bf16=True, gradient_checkpointing=True)
    if args.zero3:
        cfg.train.single_rank_zero_stage = 3
    cfg.rollout.prompts_per_epoch, cfg.rollout.n_samples, cfg.rollout.max_new_tokens = n_prompts, G, max_new
    cfg.reward.timeout_s = 5.0

    # 1. the model
    t0 = time.time()
    if toy:
        from spark_core.model.tiny import build_tiny

        build_tiny(model_dir, cfg.model)
        res["model"] = "embedded tiny Qwen2.5-VL (random init), fp32"
    else:
        info = build_real_width(model_dir, args.size, layers, args.vision_depth, cfg.model, "cuda")
        res["model"] = (f"Qwen2.5-VL {args.size.upper()} text config, {info['text_layers']} decoder layers, "
                        f"{info['vision_blocks']} vision blocks, random init, bf16")
    res["seconds_model_dir"] = time.time() - t0

    # 2. the trainer: policy and reference in a DeepSpeed engine (ZeRO-1 on one rank unless --zero3;
    # total steps: the two passes)
    torch_adam = args.torch_adam or (not toy and not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")))
    if torch_adam:
        use_torch_adam()
    res["optimizer"] = "torch AdamW" if torch_adam or toy else "DeepSpeed fused Adam"
    t0 = time.time()
    steps_per_pass = -(-n_prompts * G // train_batch)
    trainer = GRPOTrainer(cfg, model_dir, model_dir, total_steps=2 * steps_per_pass)
    sync()
    res["seconds_trainer_build"] = time.time() - t0
    res["zero_stage"] = trainer.ds_config["zero_optimization"]["stage"]
    res["world_size"] = trainer.dist.world
    res["backend"] = torch.distributed.get_backend()
    res["device"] = torch.cuda.get_device_name(0) if trainer.dist.device.startswith("cuda") else "cpu"
    with trainer.full_weights():
        params = flop_params(trainer.module)
    params["total"] = sum(partitioned_numel(p) for p in trainer.module.parameters())
    res["params_billion"] = params["total"] / 1e9

    # the segment's colocated engine: generation on the live policy, full weights under ZeRO-3
    engine = ColocatedHF(trainer, cfg.model, prompts_per_chunk=max(1, 64 // G))

    def do_rollout(rows, tag, seed):
        groups = [[r for r in rows if r["image"] is not None], [r for r in rows if r["image"] is None]]
        sync()
        t = time.time()
        engine.sync(trainer)
        try:
            out = [x for g in groups if g for x in rollout_rows(cfg, engine, g, tag, seed)]
        finally:
            engine.release()  # back to training mode (and partitions under ZeRO-3)
        sync()
        return out, time.time() - t

    # 3. rollouts, reward, recycling
    prompts = generate(n_prompts, seed=7, image_size=image_size)
    rows, seconds = do_rollout(prompts, "policy", seed=1)
    n_tokens = sum(len(r["response_token_ids"]) for r in rows)
    res["rollout"] = {"sequences": len(rows), "response_tokens": n_tokens, "seconds": seconds,
                      "tokens_per_s": n_tokens / seconds}
    with trainer.full_weights():
        trainer.module.eval()
        gap = logprob_gap(trainer, prompts, [r for r in rows if r["sample_index"] != 0], micro)
        planted = plant_worked_solutions(trainer, prompts, rows, micro)
    trainer.module.train()
    res["logprob_gap"] = gap
    t0 = time.time()
    scored, _ = score(cfg, rows, "policy")
    res["seconds_reward"] = time.time() - t0
    res["reward_mean"] = sum(r["reward"] for r in scored) / len(scored)
    res["planted_worked_solutions"] = planted
    recycled = recycle(prompts, scored, cfg.recycle, batch_size=n_prompts, epoch=0)
    res["recycled"] = {k: sum(r["kind"] == k for r in recycled) for k in sorted({r["kind"] for r in recycled})}

    # 4. the GRPO pass on the policy rollouts
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.time()
    m1 = trainer.train_pass(prompts, scored, "policy")
    sync()
    seconds = time.time() - t0
    update_tokens = sum(len(r["prompt_token_ids"]) + len(r["response_token_ids"]) for r in scored)
    update_tokens *= cfg.train.ppo_epochs
    flops = pass_flops(scored, params, trainer.ref is not None, cfg.train.ppo_epochs,
                       TokenIds.from_tokenizer(trainer.processor).image)
    anchor = cfg.train.ppo_epochs * anchor_flops(
        trainer.module.config.text_config,
        [len(r["prompt_token_ids"]) + len(r["response_token_ids"]) for r in scored])
    peak = peak_tflops(res["device"])
    first = m1["step_log"][0]
    res["update"] = {"steps": m1["steps"], "skipped": m1["skipped_steps"], "tokens": update_tokens,
                     "seconds": seconds, "tokens_per_s": update_tokens / seconds,
                     "tflops": flops / seconds / 1e12, "mfu": (flops / seconds / 1e12 / peak) if peak else None,
                     "tflops_anchor": anchor / seconds / 1e12,
                     "mfu_anchor": (anchor / seconds / 1e12 / peak) if peak else None,
                     "first_step_kl": first["kl"], "first_step_clip_frac": first["clip_frac"],
                     "grad_norms": [s["grad_norm"] for s in m1["step_log"]],
                     "trainer_gap": {k: v for k, v in m1.items() if "gap" in k}}

    # 5. rollouts of the recycled prompts, then a pass that crashes after one step and resumes
    rec_rows, _ = do_rollout(recycled, "recycled", seed=2) if recycled else ([], 0.0)
    rec_scored = score(cfg, rec_rows, "recycled")[0] if rec_rows else []
    resume_prompts, resume_rows, phase = recycled, rec_scored, "recycled"
    if len(rec_scored) < 2 * train_batch:  # too few recycled samples for two steps: retrain the policy rows
        resume_prompts, resume_rows, phase = prompts, scored, "policy-again"
    checkpoints = Checkpoints(local_dir=os.path.join(work, "resume"), every=1)
    start = trainer.global_step
    crash = CrashAfterStep(1, label="gpu_smoke")
    trainer.callbacks.append(crash)
    crashed = False
    try:
        trainer.train_pass(resume_prompts, resume_rows, phase, checkpoints=checkpoints)
    except RuntimeError as e:
        crashed = "gpu_smoke: simulated crash" in str(e)
        if not crashed:
            raise
    finally:
        trainer.callbacks.remove(crash)
    trainer.global_step = start  # a retry starts the pass again from the same step; it finds the checkpoint
    m2 = trainer.train_pass(resume_prompts, resume_rows, phase, checkpoints=checkpoints)
    res["resume"] = {"phase": phase, "crashed_after_step": 1 if crashed else None,
                     "resumed_steps": m2["resumed_steps"], "steps": m2["steps"], "global_step": m2["global_step"]}

    losses = [s["loss"] for s in m1["step_log"] + m2["step_log"]]
    res["losses"] = losses
    res["all_losses_finite"] = all(math.isfinite(x) for x in losses) and not m1["skipped_steps"] \
        and not m2["skipped_steps"]
    res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    res["flytekit_imported"] = "flytekit" in sys.modules
    res["seconds_total"] = time.time() - t_start
    return res


def table(res: dict) -> str:
    u, r, g, z = res["update"], res["rollout"], res["logprob_gap"], res["resume"]
    rows = [
        ("device", f"{res['device']} ({res['mode']})"),
        ("model", f"{res['model']}, {res['params_billion']:.2f} B parameters"),
        ("trainer", f"DeepSpeed ZeRO-{res['zero_stage']}, {res['backend']}, world size {res['world_size']}, "
                    f"{res['optimizer']}"),
        ("model dir / trainer build", f"{res['seconds_model_dir']:.1f} s / {res['seconds_trainer_build']:.1f} s"),
        ("rollout tokens/s", f"{r['tokens_per_s']:.1f} ({r['response_tokens']} tokens, {r['sequences']} sequences, "
                             f"{r['seconds']:.1f} s)"),
        ("update tokens/s", f"{u['tokens_per_s']:.1f} ({u['tokens']} tokens, {u['steps']} steps, {u['seconds']:.1f} s)"),
        ("update MFU, this project's count", f"{100 * u['mfu']:.1f} % ({u['tflops']:.1f} TFLOP/s of {peak_tflops(res['device'])})"
                       if u["mfu"] is not None else f"n/a ({u['tflops']:.3g} TFLOP/s)"),
        ("update MFU, verl/EasyR1 convention",
         f"{100 * u['mfu_anchor']:.1f} % ({u['tflops_anchor']:.1f} TFLOP/s of {peak_tflops(res['device'])})"
         if u["mfu_anchor"] is not None else f"n/a ({u['tflops_anchor']:.3g} TFLOP/s)"),
        ("peak GPU memory", "n/a (CPU)" if res["peak_gpu_memory_gib"] is None
         else f"{res['peak_gpu_memory_gib']:.1f} GiB"),
        ("rollout-vs-trainer log-prob gap", f"mean {g['mean']:.2e}, max {g['max']:.2e} ({g['tokens']} tokens)"),
        ("KL at first step", f"{u['first_step_kl']:.2e}"),
        ("clip fraction at first step", f"{u['first_step_clip_frac']:.3g}"),
        ("gradient norm, first / last step", f"{u['grad_norms'][0]:.3g} / {u['grad_norms'][-1]:.3g}"),
        ("reward mean / recycled", f"{res['reward_mean']:.3f} / {res['recycled']}"),
        ("resume", f"{z['phase']} pass crashed after step {z['crashed_after_step']}, resumed after "
                   f"{z['resumed_steps']} step(s), {z['steps']} steps in all"),
        ("every loss finite", "yes" if res["all_losses_finite"] else f"NO: {res['losses']}"),
        ("total time", f"{res['seconds_total']:.1f} s"),
    ]
    if u["trainer_gap"]:
        rows.insert(10, ("trainer's gap metrics", ", ".join(f"{k} {v:.2e}" for k, v in u["trainer_gap"].items())))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'what':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def free_port() -> str:
    """A TCP port nothing listens on now, for the single-process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "MASTER_PORT" not in os.environ and "RANK" not in os.environ:
        os.environ["MASTER_PORT"] = free_port()
    res = run(args)
    print(table(res), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    ok = res["all_losses_finite"] and res["resume"]["resumed_steps"] >= 1 and not res["flytekit_imported"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
