"""The GRPO update on a DeepSpeed engine, run once per rank (torchrun / Flyte Elastic).

Inputs are plain lists of artifact rows; outputs are a Hugging Face checkpoint (rank 0
writes it), the DeepSpeed training state (optimizer moments and global step, so the
next update continues the same optimizer and schedule), and per-step metrics.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
from tqdm.auto import tqdm

from spark_core.config import SparkConfig, total_optimizer_steps
from spark_core.model.loading import load_model, load_processor, save_checkpoint
from spark_core.model.logprobs import build_batch, response_logprobs
from spark_core.train.grpo import grpo_loss, group_advantages, lr_at

STATE_FILE = "spark_trainer_state.json"
FAULT_ENV = "SPARK_FAULT_NAN_STEPS"  # test hook: comma-separated global steps whose loss is forced to NaN


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: str


def init_distributed() -> DistInfo:
    import deepspeed

    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + random.Random(os.getpid()).randint(0, 2000)))
        # NCCL collectives that hang after a peer dies must fail instead of blocking forever.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local,
                    f"cuda:{local}" if cuda else "cpu")


def deepspeed_config(cfg: SparkConfig, world: int) -> dict:
    t = cfg.train
    ga = max(1, t.train_batch_size // (t.micro_batch_size * world))
    cuda = torch.cuda.is_available()
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": ga,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage, "overlap_comm": cuda, "contiguous_gradients": True},
        "bf16": {"enabled": bool(t.bf16 and cuda)},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": list(t.adam_betas), "weight_decay": t.weight_decay,
                       "torch_adam": not cuda},
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _read_state(state_dir: str | None) -> dict:
    if state_dir and os.path.exists(os.path.join(state_dir, STATE_FILE)):
        return json.load(open(os.path.join(state_dir, STATE_FILE)))
    return {"global_step": 0}


def _plan_steps(n: int, micro: int, ga: int, world: int) -> list[list[list[int]]]:
    """Sample indices for each (step, rank) as `ga` micro-batches; every rank gets the
    same number of micro-batches so collectives stay in lockstep."""
    per_step = micro * ga * world
    plan = []
    for s in range(0, n, per_step):
        idx = list(range(s, min(n, s + per_step)))
        ranks = [idx[r::world] for r in range(world)]
        plan.append([[r[m::ga] for m in range(ga)] for r in ranks])
    return plan


def run_update(*, cfg: SparkConfig, model_dir: str, ref_dir: str, prompts: list[dict], scored: list[dict],
               out_dir: str, state_in: str | None, state_out: str, phase: str) -> dict:
    """One GRPO pass over `scored` (G rollouts per prompt). Returns rank 0's metrics."""
    import deepspeed

    dist = init_distributed()
    t0 = time.time()
    torch.manual_seed(cfg.train.seed)
    processor = load_processor(model_dir, cfg.model)
    model = load_model(model_dir, cfg.model, device=dist.device, for_training=True)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ref = None
    if cfg.train.kl_coef > 0:
        ref = load_model(ref_dir, cfg.model, device=dist.device)
        ref.requires_grad_(False)
    ds_cfg = deepspeed_config(cfg, dist.world)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=ds_cfg)
    state = _read_state(state_in)
    if state_in and os.path.isdir(os.path.join(state_in, "ds")):
        engine.load_checkpoint(os.path.join(state_in, "ds"), load_module_strict=True,
                               load_optimizer_states=True, load_lr_scheduler_states=False)
    global_step = int(state.get("global_step", 0))
    total = total_optimizer_steps(cfg)
    fault_steps = {int(s) for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip()}

    by_id = {p["prompt_id"]: p for p in prompts}
    missing = sorted({s["prompt_id"] for s in scored} - set(by_id))
    if missing:
        raise KeyError(f"rollouts refer to prompts not in the prompt artifact: {missing[:5]}")
    adv = group_advantages([s["prompt_id"] for s in scored], [float(s["reward"]) for s in scored])
    order = list(range(len(scored)))
    random.Random(cfg.train.seed + global_step).shuffle(order)

    ga = ds_cfg["gradient_accumulation_steps"]
    steps_log = []
    bad_run = 0
    for _ in range(cfg.train.ppo_epochs):
        plan = _plan_steps(len(order), cfg.train.micro_batch_size, ga, dist.world)
        for step_plan in tqdm(plan, desc=f"update[{phase}]", disable=dist.rank != 0):
            lr = lr_at(global_step, total, cfg.train.lr, cfg.train.warmup_ratio, cfg.train.min_lr_ratio)
            stats_acc: list[dict] = []
            step_bad = False
            for micro in step_plan[dist.rank]:
                weight = 1.0
                if not micro:  # an empty share of the last step: keep lockstep, contribute nothing
                    micro, weight = [0], 0.0
                ids = [order[i] for i in micro]
                rows = [scored[i] for i in ids]
                batch = build_batch(processor, [by_id[r["prompt_id"]] for r in rows],
                                    [list(r["prompt_token_ids"]) for r in rows],
                                    [list(r["response_token_ids"]) for r in rows]).to(dist.device)
                logp = response_logprobs(engine.module, batch)
                old = torch.zeros_like(logp)
                mask = batch.response_mask.bool()
                old[mask] = torch.tensor([x for r in rows for x in r["old_logprobs"]], dtype=old.dtype,
                                         device=old.device)
                ref_lp = None
                if ref is not None:
                    with torch.no_grad():
                        ref_lp = response_logprobs(ref, batch)
                a = torch.tensor([adv[i] for i in ids], device=logp.device)
                loss, st = grpo_loss(logp, old, ref_lp, a, batch.response_mask, cfg.train.eps_clip,
                                     cfg.train.kl_coef)
                if global_step in fault_steps:
                    loss = loss * float("nan")
                finite = torch.tensor([1.0 if torch.isfinite(loss) else 0.0])
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                if finite.item() < 1.0:
                    step_bad = True
                    # ZeRO reduces gradients in hooks, so every rank still needs a backward that
                    # touches every parameter; this one is exactly zero and finite.
                    loss = sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0
                    st = {k: float("nan") for k in st}
                engine.backward(loss * weight)
                stats_acc.append(st | {"loss": float("nan") if step_bad else float(loss.detach())})
                # a skipped step must leave the weights untouched: lr 0 for it
                for g in engine.optimizer.param_groups:
                    g["lr"] = 0.0 if step_bad else lr
                engine.step()
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            if not step_bad and not math.isfinite(grad_norm):
                step_bad = True  # weights already moved by a non-finite gradient: clipped, but report it
            bad_run = bad_run + 1 if step_bad else 0
            mean = lambda k: float(sum(s[k] for s in stats_acc) / max(1, len(stats_acc)))  # noqa: E731
            steps_log.append({"step": global_step, "phase": phase, "loss": mean("loss"), "pg_loss": mean("pg_loss"),
                              "kl": mean("kl"), "clip_frac": mean("clip_frac"), "grad_norm": grad_norm,
                              "lr": 0.0 if step_bad else lr, "skipped": step_bad})
            global_step += 1
            if bad_run >= cfg.train.max_bad_steps:
                raise TrainingDiverged(
                    f"{bad_run} consecutive optimizer steps had a non-finite loss or gradient "
                    f"(last at global step {global_step - 1}); stopping. The last good checkpoint is "
                    f"the input of this update: {model_dir}"
                )

    # ---- save: HF weights (rank 0) and the optimizer state (all ranks) ----
    if cfg.train.zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
    else:
        sd = None
    if dist.rank == 0:
        unwrapped = engine.module
        if sd is not None:
            unwrapped.save_pretrained(out_dir, state_dict=sd, safe_serialization=True)
            from spark_core.model.loading import save_processor

            save_processor(processor, out_dir)
        else:
            save_checkpoint(unwrapped, processor, out_dir)
    engine.save_checkpoint(os.path.join(state_out, "ds"), tag="state", save_latest=True)
    if dist.rank == 0:
        with open(os.path.join(state_out, STATE_FILE), "w") as f:
            json.dump({"global_step": global_step, "total_steps": total}, f)
    torch.distributed.barrier()
    kept = [s for s in steps_log if not s["skipped"]]
    agg = lambda k: float(sum(s[k] for s in kept) / len(kept)) if kept else float("nan")  # noqa: E731
    return {
        "phase": phase,
        "steps": len(steps_log),
        "skipped_steps": sum(s["skipped"] for s in steps_log),
        "loss": agg("loss"),
        "pg_loss": agg("pg_loss"),
        "kl": agg("kl"),
        "clip_frac": agg("clip_frac"),
        "grad_norm": agg("grad_norm"),
        "lr": steps_log[-1]["lr"] if steps_log else 0.0,
        "global_step": global_step,
        "seconds": time.time() - t0,
        "world_size": dist.world,
        "step_log": steps_log,
    }
