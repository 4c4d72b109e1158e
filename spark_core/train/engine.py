"""The GRPO update on a DeepSpeed engine, run once per rank (torchrun / Flyte Elastic).

`GRPOTrainer` keeps the engine alive across passes (a fused rollout+update segment
calls `train_pass` repeatedly); `run_update` is one pass plus the saves. Inputs are
plain lists of artifact rows; outputs are a Hugging Face checkpoint (rank 0 writes it),
the DeepSpeed training state (optimizer moments and global step, so the next update
continues the same optimizer and schedule), and per-step metrics. docs/cluster.md
("Trainer numerics") says how pi_old, the loss normalisation, the batch plan, ZeRO-3,
precision and skipped steps are handled.

Resume: with `checkpoints` (StepCheckpoints), the engine saves its whole state every
few optimizer steps and, when it starts, continues from the newest checkpoint of the
same pass (same rollouts, same starting step) instead of redoing finished steps. The
step plan depends only on the seed and the starting step, so skipping by step index
gives the same result as an uninterrupted pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch
from tqdm.auto import tqdm

from spark_core.config import SparkConfig, total_optimizer_steps, validate_train_batch
from spark_core.memory_budget import effective_zero_stage
from spark_core.model.loading import load_model, load_processor, save_checkpoint, save_processor
from spark_core.model.logprobs import ResponseLogprobs, build_batch
from spark_core.train import collectives as comm
from spark_core.train.grpo import grpo_loss, group_advantages, lr_at

STATE_FILE = "spark_trainer_state.json"
FAULT_ENV = "SPARK_FAULT_NAN_STEPS"  # test hook: comma-separated global steps whose loss is forced to NaN
GRAD_FAULT_ENV = "SPARK_FAULT_NAN_GRAD_STEPS"  # test hook: steps whose loss is finite but whose gradient is NaN
CHECKPOINT_EVERY_ENV = "SPARK_CHECKPOINT_EVERY"  # optimizer steps between resume checkpoints (0 = none)
CRASH_AFTER_STEP_ENV = "SPARK_FAULT_CRASH_AFTER_STEP"  # test hook: crash after this step of the pass (1-based)
RESUME_FILE = "spark_resume.json"

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: str


def _checkpoint_every() -> int:
    return int(os.environ.get(CHECKPOINT_EVERY_ENV, "1") or "1")


@dataclass
class StepCheckpoints:
    """Where and how often a pass saves resume checkpoints, and how they outlive the process.

    local_dir: a directory with the same path on every rank of a node; the newest
        checkpoint is kept under it (so a restart in the same pod resumes from it).
    every: optimizer steps between checkpoints (env SPARK_CHECKPOINT_EVERY, default 1; 0 = off).
    restore: fetch the last published checkpoint into the given (empty) directory;
        True if there was one. Called on local rank 0 of each node before training.
    publish: make a local file or directory durable (e.g. Flyte's intra-task checkpoint).
        A directory's contents land at the top of the published tree, a file next to
        them; calls are ordered, and the state file goes last, after its weights.
    """

    local_dir: str
    every: int = field(default_factory=_checkpoint_every)
    restore: Callable[[str], bool] | None = None
    publish: Callable[[str], None] | None = None


def deepspeed_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's JIT op builder can read it.

    Images built for Hopper or Blackwell often set arch-specific entries such as "9.0a"
    or "10.0f"; DeepSpeed parses every entry as integers and fails with "invalid literal
    for int()" while compiling its fused Adam at the first update. The suffix only enables
    instructions (wgmma, TMA) that DeepSpeed's ops do not use, so it is dropped; "+PTX"
    is kept. Entries are rejoined with ";" (DeepSpeed splits on ";" and spaces).
    """
    out = []
    for cc in value.replace(" ", ";").split(";"):
        cc = cc.strip()
        if not cc:
            continue
        base, plus, ptx = cc.partition("+")
        base = ".".join(re.sub(r"[a-z]+$", "", part) for part in base.split("."))
        cc = base + (plus + ptx if plus else "")
        if cc not in out:
            out.append(cc)
    return ";".join(out)


def readable_arch_list_env() -> None:
    """Rewrite TORCH_CUDA_ARCH_LIST in place where DeepSpeed could not parse it."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if re.search(r"\d[a-z]", arch):
        fixed = deepspeed_arch_list(arch)
        log.warning("TORCH_CUDA_ARCH_LIST=%r rewritten as %r for DeepSpeed's op builder", arch, fixed)
        os.environ["TORCH_CUDA_ARCH_LIST"] = fixed


def init_distributed() -> DistInfo:
    import deepspeed

    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    readable_arch_list_env()
    if cuda:  # before the process group exists: NCCL binds each rank to the current device
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + random.Random(os.getpid()).randint(0, 2000)))
        # NCCL collectives that hang after a peer dies must fail instead of blocking forever.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local,
                    f"cuda:{local}" if cuda else "cpu")


def deepspeed_config(cfg: SparkConfig, world: int, cuda: bool | None = None) -> dict:
    """The DeepSpeed config of the policy for `world` ranks. The ZeRO stage is
    `effective_zero_stage`: a single rank runs train.single_rank_zero_stage (1) when the
    preset asks for more (ZeRO-3 there would gather and release every module's weights in
    every micro-batch for nothing to partition over); several ranks keep train.zero_stage."""
    t = cfg.train
    ga = validate_train_batch(t, world)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16 = bool(t.bf16 and cuda)
    stage = effective_zero_stage(t.zero_stage, world, t.single_rank_zero_stage)
    if stage != t.zero_stage:
        log.info("world size %d: ZeRO stage %d instead of train.zero_stage=%d (nothing to partition over one rank; "
                 "train.single_rank_zero_stage)", world, stage, t.zero_stage)
    ds = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": ga,
        "gradient_clipping": t.grad_clip,
        # compute_grad_norm / check_grad_overflow: a step whose gradient norm is not finite
        # is dropped whole by DeepSpeed (weights and optimizer state untouched); the trainer
        # relies on this to skip bad steps.
        "zero_optimization": {"stage": stage, "overlap_comm": cuda, "contiguous_gradients": True,
                              "compute_grad_norm": True},
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": list(t.adam_betas), "weight_decay": t.weight_decay,
                       "torch_adam": not cuda},
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # bf16 weights and activations, but gradients are summed over micro-batches and
        # reduced over ranks in fp32: a bf16 sum of 64 samples' gradients keeps ~3
        # significant digits, and at lr 5e-7 the update is mostly that rounding noise.
        ds["communication_data_type"] = "fp32"
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def reference_config(ds_config: dict) -> dict:
    """DeepSpeed config of the frozen reference: the policy's, without an optimizer."""
    ref = {k: v for k, v in ds_config.items()
           if k not in ("optimizer", "gradient_clipping", "zero_allow_untested_optimizer")}
    ref["zero_optimization"] = {"stage": ds_config["zero_optimization"]["stage"]}
    return ref


def _read_state(state_dir: str | None) -> dict:
    if state_dir and os.path.exists(os.path.join(state_dir, STATE_FILE)):
        return json.load(open(os.path.join(state_dir, STATE_FILE)))
    return {"global_step": 0}


def _pass_key(phase: str, start_step: int, scored: list[dict], world: int, ppo_epochs: int) -> str:
    """Identity of one update pass: a checkpoint is only resumed by the same pass."""
    h = hashlib.sha256(json.dumps([phase, start_step, world, ppo_epochs]).encode())
    for s in scored:
        h.update(json.dumps([s["prompt_id"], list(s["response_token_ids"]), float(s["reward"])]).encode())
    return h.hexdigest()[:32]


def _slot_dir(root: str, tag: str) -> str | None:
    """The DeepSpeed load_dir holding `tag`: published trees have it at the top, the live
    local tree one level down (live/<slot>/<tag>)."""
    for d in (root, os.path.join(root, tag.replace("slot-", ""))):
        if os.path.isdir(os.path.join(d, tag)):
            return d
    return None


def _read_resume(root: str, key: str) -> dict | None:
    path = os.path.join(root, RESUME_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable resume state %s: %s", path, e)
        return None
    if st.get("pass_key") != key:
        log.info("resume state in %s belongs to another pass; not resuming from it", root)
        return None
    load_dir = _slot_dir(root, st.get("tag", ""))
    if load_dir is None:
        log.warning("resume state in %s names checkpoint %r, which is missing", root, st.get("tag"))
        return None
    return dict(st, load_dir=load_dir)


def _find_resume(ck: StepCheckpoints, dist: DistInfo, key: str) -> dict | None:
    """The newest checkpoint of this pass, from the last attempt (restore) or from an
    earlier worker in this pod (local_dir/live); the same on every rank, or none."""
    live, restored = os.path.join(ck.local_dir, "live"), os.path.join(ck.local_dir, "restored")
    if dist.local_rank == 0:
        os.makedirs(live, exist_ok=True)
        if ck.restore is not None:
            shutil.rmtree(restored, ignore_errors=True)
            os.makedirs(restored)
            try:
                if not ck.restore(restored):
                    shutil.rmtree(restored, ignore_errors=True)
            except Exception as e:  # noqa: BLE001 - a lost checkpoint means starting over, not failing
                log.warning("could not restore the previous checkpoint (%s); starting the pass from its beginning", e)
                shutil.rmtree(restored, ignore_errors=True)
    comm.barrier()
    found = [st for st in (_read_resume(r, key) for r in (restored, live)) if st is not None]
    best = max(found, key=lambda st: st["steps_done"]) if found else None
    n = best["steps_done"] if best else 0
    lo, neg_hi = comm.all_reduce_values([n, -n], op=comm.ReduceOp.MIN)
    if int(lo) != -int(neg_hi):
        log.warning("ranks found different resume checkpoints (steps %d..%d); starting the pass over",
                    int(lo), -int(neg_hi))
        return None
    return best


def _save_resume(ck: StepCheckpoints, dist: DistInfo, engine, state: dict) -> None:
    """Save the engine (all ranks) and the pass state; publish weights first, state last.

    Checkpoints alternate between two slots, so the one the state file names is never
    the one being overwritten."""
    slot = "a" if (state["steps_done"] // max(1, ck.every)) % 2 else "b"
    tag = f"slot-{slot}"
    live = os.path.join(ck.local_dir, "live")
    slot_root = os.path.join(live, slot)
    if dist.local_rank == 0:
        shutil.rmtree(slot_root, ignore_errors=True)
        os.makedirs(slot_root)
    comm.barrier()
    engine.save_checkpoint(slot_root, tag=tag, save_latest=False,
                           client_state={"spark_steps_done": state["steps_done"]})
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, os.path.join(slot_root, tag, f"rng_rank{dist.rank}.pt"))
    comm.barrier()
    if dist.local_rank == 0 and ck.publish is not None:
        ck.publish(slot_root)
    comm.barrier()
    if dist.local_rank == 0:
        path = os.path.join(live, RESUME_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(dict(state, tag=tag), f)
        os.replace(path + ".tmp", path)
        if dist.rank == 0 and ck.publish is not None:
            ck.publish(path)
    comm.barrier()


def _rollout_logprobs(row: dict, required: bool) -> list[float] | None:
    """The rollout engine's per-token log-probs of a scored row (None when it has none)."""
    lp = row.get("old_logprobs")
    n = len(row["response_token_ids"])
    if lp is None or (len(lp) == 0 and n > 0):
        if required:
            raise ValueError(f"train.tis_cap needs the rollout's log-probs, but a row of prompt "
                             f"{row['prompt_id']} has none")
        return None
    if len(lp) != n:
        raise ValueError(f"a rollout of prompt {row['prompt_id']} has {len(lp)} log-probs for {n} response tokens")
    return [float(x) for x in lp]


def _plan_steps(n: int, micro: int, ga: int, world: int, lengths: list[int] | None = None,
                token_budget: int = 0, packed: bool = False) -> list[list[list[int]]]:
    """Sample indices for each (step, rank) as micro-batches; every rank gets the same
    number of micro-batches (empty ones fill up a short share) so collectives stay in
    lockstep.

    A step holds micro x ga x world samples. Without a token budget each rank's share is
    `ga` micro-batches of `micro` samples. With `token_budget` > 0 and `lengths` (tokens of
    each sample, prompt and response), the step's samples are sorted longest first and
    dealt to the ranks in turn, and each rank's share is cut into runs of similar length
    that fit the budget (`_cut_by_tokens`). The plan depends only on its inputs, so a
    resumed pass rebuilds the same one."""
    per_step = micro * ga * world
    plan = []
    for s in range(0, n, per_step):
        idx = list(range(s, min(n, s + per_step)))
        if token_budget > 0:
            if lengths is None:
                raise ValueError("a token budget needs the samples' lengths")
            idx.sort(key=lambda i: (-lengths[i], i))
            shares = [_cut_by_tokens(idx[r::world], lengths, token_budget, packed) for r in range(world)]
            most = max(len(m) for m in shares)
            plan.append([m + [[] for _ in range(most - len(m))] for m in shares])
            continue
        ranks = [idx[r::world] for r in range(world)]
        plan.append([[r[m::ga] for m in range(ga)] for r in ranks])
    return plan


def _cut_by_tokens(idx: list[int], lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Consecutive runs of `idx` (longest first) whose tokens through the model stay
    within `budget`: the sum of the lengths when packed, count x the longest when padded.
    A sample longer than the budget gets a micro-batch of its own."""
    out: list[list[int]] = []
    cur: list[int] = []
    total = longest = 0
    for i in idx:
        t, lo = total + lengths[i], max(longest, lengths[i])
        if cur and (t if packed else (len(cur) + 1) * lo) > budget:
            out.append(cur)
            cur, t, lo = [], lengths[i], lengths[i]
        cur.append(i)
        total, longest = t, lo
    if cur:
        out.append(cur)
    return out


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder (patch embedding, blocks and merger) of a Qwen2.5-VL model."""
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (.model.visual); "
                         "set train.freeze_vision=false for a text-only model")
    return visual


class GRPOTrainer:
    """A DeepSpeed GRPO trainer that stays alive across passes (one per rank).

    `__init__` joins the process group, builds the policy and the frozen reference,
    wraps the policy in a DeepSpeed engine and loads the optimizer state and global
    step of `state_in`. `train_pass` runs one GRPO pass; `save_hf` and `save_state`
    write the consolidated Hugging Face checkpoint and the DeepSpeed state.
    """

    def __init__(self, cfg: SparkConfig, model_dir: str, ref_dir: str, state_in: str | None = None,
                 total_steps: int | None = None):
        import deepspeed

        self.cfg = cfg
        self.model_dir = model_dir
        self.dist = init_distributed()
        validate_train_batch(cfg.train, self.dist.world)  # before any model is built
        torch.manual_seed(cfg.train.seed)
        self.processor = load_processor(model_dir, cfg.model)
        self.ds_config = deepspeed_config(cfg, self.dist.world)
        self.zero_stage = int(self.ds_config["zero_optimization"]["stage"])  # 1 on a single rank
        # ZeRO-3: policy and reference are built partitioned (no rank holds a whole model)
        zero3 = self.ds_config if self.zero_stage == 3 else None
        model = load_model(model_dir, cfg.model, device=self.dist.device, for_training=True, zero3_config=zero3)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.train.freeze_vision:
            vision_tower(model).requires_grad_(False)
        self.ref = None
        if cfg.train.kl_coef > 0:
            ref_cfg = reference_config(self.ds_config)
            ref = load_model(ref_dir, cfg.model, device=self.dist.device,
                             zero3_config=ref_cfg if zero3 is not None else None)
            ref.requires_grad_(False)
            self.ref = ResponseLogprobs(ref, packed=cfg.train.packed).eval()
            if zero3 is not None:  # an engine without optimizer keeps the reference sharded
                self.ref, *_ = deepspeed.initialize(model=self.ref, config=ref_cfg)
                self.ref.eval()
        # The engine wraps a module whose forward returns response log-probs, so every
        # forward goes through DeepSpeed (ZeRO-3 gathers and prefetches shards in its hooks).
        net = ResponseLogprobs(model, packed=cfg.train.packed)  # refuses packing on a backend without it
        self.engine, *_ = deepspeed.initialize(model=net,
                                               model_parameters=[p for p in net.parameters() if p.requires_grad],
                                               config=self.ds_config)
        self.state_in = state_in
        self.global_step = int(_read_state(state_in).get("global_step", 0))
        # the schedule counts the engine's real steps (micro x accumulation x this job's world)
        self.total_steps = int(total_steps) if total_steps is not None else total_optimizer_steps(cfg, self.dist.world)
        if state_in and os.path.isdir(os.path.join(state_in, "ds")):
            self.engine.load_checkpoint(os.path.join(state_in, "ds"), load_module_strict=True,
                                        load_optimizer_states=True, load_lr_scheduler_states=False)

    @property
    def module(self) -> torch.nn.Module:
        """The live policy (a Hugging Face model), e.g. for generation between passes.
        Under ZeRO-3 its parameters are shards: generate with synced_gpus=True when the
        world has more than one rank."""
        return self.engine.module.policy

    # ---- one pass -------------------------------------------------------------------
    def train_pass(self, prompts: list[dict], scored: list[dict], phase: str,
                   checkpoints: StepCheckpoints | None = None) -> dict:
        """One GRPO pass over `scored` (G rollouts per prompt). Returns rank 0's metrics.

        With `checkpoints`, the pass saves resume checkpoints as it goes and continues from
        the newest one of the same pass if there is one ("resumed_steps" in the metrics);
        they are removed once the pass is complete."""
        cfg, dist, engine = self.cfg, self.dist, self.engine
        t0 = time.time()
        start_step = self.global_step
        global_step = start_step
        fault_steps = {int(s) for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip()}
        grad_fault_steps = {int(s) for s in os.environ.get(GRAD_FAULT_ENV, "").split(",") if s.strip()}
        crash_after = int(os.environ.get(CRASH_AFTER_STEP_ENV, "0") or "0")

        by_id = {p["prompt_id"]: p for p in prompts}
        missing = sorted({s["prompt_id"] for s in scored} - set(by_id))
        if missing:
            raise KeyError(f"rollouts refer to prompts not in the prompt artifact: {missing[:5]}")
        adv = group_advantages([s["prompt_id"] for s in scored], [float(s["reward"]) for s in scored])
        order = list(range(len(scored)))
        random.Random(cfg.train.seed + start_step).shuffle(order)

        steps_log = []
        bad_run = 0
        done = 0  # optimizer steps of this pass already taken by an earlier attempt
        key = _pass_key(phase, start_step, scored, dist.world, cfg.train.ppo_epochs)
        resume = _find_resume(checkpoints, dist, key) if checkpoints is not None else None
        ga = self.ds_config["gradient_accumulation_steps"]
        lengths = [len(scored[i]["prompt_token_ids"]) + len(scored[i]["response_token_ids"]) for i in order]
        plan = _plan_steps(len(order), cfg.train.micro_batch_size, ga, dist.world, lengths=lengths,
                           token_budget=cfg.train.micro_batch_tokens, packed=cfg.train.packed)
        n_pass = len(plan) * cfg.train.ppo_epochs

        def micro_batch(micro: list[int]):
            """(sample indices, weight, batch on the device) of one micro-batch of the plan."""
            weight = 1.0
            if not micro:  # an empty share of the last step: keep lockstep, contribute nothing
                micro, weight = [0], 0.0
            ids = [order[i] for i in micro]
            rows = [scored[i] for i in ids]
            batch = build_batch(self.processor, [by_id[r["prompt_id"]] for r in rows],
                                [list(r["prompt_token_ids"]) for r in rows],
                                [list(r["response_token_ids"]) for r in rows]).to(dist.device)
            return ids, weight, batch

        # pi_old: recomputed with the trainer's own model at the start of the pass (before
        # any resume checkpoint is loaded, so a resumed pass sees the same values).
        old_lp, gap = self._behaviour_logprobs(plan, micro_batch, scored)
        if resume is not None:
            _, client = engine.load_checkpoint(resume["load_dir"], tag=resume["tag"], load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
            if (client or {}).get("spark_steps_done") != resume["steps_done"]:
                raise RuntimeError(f"resume checkpoint {resume['load_dir']}/{resume['tag']} holds step "
                                   f"{(client or {}).get('spark_steps_done')}, its state file says {resume['steps_done']}")
            rng = os.path.join(resume["load_dir"], resume["tag"], f"rng_rank{dist.rank}.pt")
            if os.path.exists(rng):
                rng = torch.load(rng, weights_only=True)
                torch.set_rng_state(rng["cpu"])
                if "cuda" in rng and torch.cuda.is_available():
                    torch.cuda.set_rng_state(rng["cuda"])
            done, global_step = int(resume["steps_done"]), int(resume["global_step"])
            steps_log, bad_run = list(resume["steps_log"]), int(resume["bad_run"])
            if dist.rank == 0:
                log.warning("update[%s]: resuming after %d finished optimizer steps (global step %d)", phase, done,
                            global_step)

        k = 0  # optimizer steps of this pass, 1-based once taken
        for _ in range(cfg.train.ppo_epochs):
            for step_plan in tqdm(plan, desc=f"update[{phase}]", disable=dist.rank != 0):
                k += 1
                if k <= done:
                    continue  # finished before the restart
                lr = lr_at(global_step, self.total_steps, cfg.train.lr, cfg.train.warmup_ratio, cfg.train.min_lr_ratio)
                if phase == "recycled":
                    lr *= cfg.train.recycled_lr_scale
                stats_acc: list[dict] = []
                step_bad = False
                # SPARK's token mean is over the optimizer step: every micro-batch's token sum
                # is divided by the step's response-token count over all micro-batches and ranks
                step_tokens, = comm.all_reduce_values(
                    [float(sum(len(scored[order[i]]["response_token_ids"]) for m in step_plan[dist.rank] for i in m))],
                    op=comm.ReduceOp.SUM)
                for j, micro in enumerate(step_plan[dist.rank]):
                    # the step ends with its last micro-batch, however many the plan made
                    # (a token budget gives each step its own count, not the config's ga)
                    engine.set_gradient_accumulation_boundary(j == len(step_plan[dist.rank]) - 1)
                    ids, weight, batch = micro_batch(micro)
                    logp = engine(**batch.forward_inputs())
                    mask = batch.response_mask.bool()
                    old = torch.zeros_like(logp)
                    old[mask] = torch.cat([old_lp[i] for i in ids])
                    is_weight = None
                    if cfg.train.tis_cap > 0:  # truncated importance sampling: pi_old(trainer) / pi(rollout engine)
                        rollout = torch.zeros_like(logp)
                        rollout[mask] = torch.tensor([x for i in ids for x in _rollout_logprobs(scored[i], True)],
                                                     dtype=logp.dtype, device=logp.device)
                        is_weight = torch.exp(old - rollout).clamp(max=cfg.train.tis_cap) * mask
                    ref_lp = None
                    if self.ref is not None:
                        with torch.no_grad():
                            ref_lp = self.ref(**batch.forward_inputs())
                    a = torch.tensor([adv[i] for i in ids], device=logp.device)
                    loss, st = grpo_loss(logp, old, ref_lp, a, batch.response_mask, cfg.train.eps_clip,
                                         cfg.train.kl_coef, is_weight=is_weight, denom=step_tokens)
                    if global_step in fault_steps:
                        loss = loss * float("nan")
                    if global_step in grad_fault_steps:  # sqrt'(0) is inf, times 0 is NaN: value 0, gradient NaN
                        first = next(p for p in engine.module.parameters() if p.requires_grad)
                        loss = loss + torch.sqrt(first.sum() * 0.0)
                    finite, = comm.all_reduce_values([1.0 if torch.isfinite(loss) else 0.0], op=comm.ReduceOp.MIN)
                    if finite < 1.0:
                        step_bad = True
                        st = {k: (v if k == "tokens" else float("nan")) for k, v in st.items()}
                    if step_bad:
                        # Poison the step's gradient on every rank: DeepSpeed then takes its own
                        # overflow path, which drops the gradient and leaves the weights, Adam's
                        # moments and its step count untouched (lr 0 would still move the moments).
                        loss = loss * float("nan")
                    # DeepSpeed averages gradients over the data-parallel ranks: x world undoes
                    # that (the loss is already normalised by the step's global token count),
                    # and scale_wrt_gas=False keeps it from dividing by the accumulation steps.
                    engine.backward(loss * (weight * dist.world), scale_wrt_gas=False)
                    if weight:
                        stats_acc.append(st)
                    for g in engine.optimizer.param_groups:
                        g["lr"] = lr
                    engine.step()
                grad_norm = engine.get_global_grad_norm()
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                if not step_bad and not math.isfinite(grad_norm):
                    step_bad = True  # ZeRO's optimizer found non-finite gradients and skipped the update
                if step_bad and math.isfinite(grad_norm):
                    raise RuntimeError(f"global step {global_step} had a non-finite loss but DeepSpeed applied it "
                                       f"(gradient norm {grad_norm}); refusing to continue with corrupted weights")
                bad_run = bad_run + 1 if step_bad else 0
                n_tok = sum(s["tokens"] for s in stats_acc)
                mean = lambda k: (float("nan") if step_bad or not n_tok  # noqa: E731
                                  else float(sum(s[k] * s["tokens"] for s in stats_acc) / n_tok))
                steps_log.append({"step": global_step, "phase": phase, "loss": mean("loss"),
                                  "pg_loss": mean("pg_loss"), "kl": mean("kl"), "clip_frac": mean("clip_frac"),
                                  "grad_norm": grad_norm, "lr": 0.0 if step_bad else lr, "skipped": step_bad})
                global_step += 1
                self.global_step = global_step
                if bad_run >= cfg.train.max_bad_steps:
                    raise TrainingDiverged(
                        f"{bad_run} consecutive optimizer steps had a non-finite loss or gradient "
                        f"(last at global step {global_step - 1}); stopping. The last good checkpoint is "
                        f"the input of this update: {self.model_dir}"
                    )
                if checkpoints is not None and checkpoints.every > 0 and k % checkpoints.every == 0 and k < n_pass:
                    _save_resume(checkpoints, dist, engine, {
                        "pass_key": key, "phase": phase, "steps_done": k, "global_step": global_step,
                        "steps_log": steps_log, "bad_run": bad_run, "world": dist.world})
                if crash_after and k == crash_after:
                    raise RuntimeError(f"{CRASH_AFTER_STEP_ENV}={crash_after}: simulated crash after step {k} "
                                       f"of update[{phase}]")
        self.global_step = global_step
        if checkpoints is not None:
            self._clear_checkpoints(checkpoints)
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
            "resumed_steps": done,
            # |log pi_old(trainer) - log pi(rollout engine)| over the pass's response tokens
            "rollout_logprob_gap_mean": gap[0],
            "rollout_logprob_gap_max": gap[1],
            "seconds": time.time() - t0,
            "world_size": dist.world,
            "step_log": steps_log,
        }

    @torch.no_grad()
    def _behaviour_logprobs(self, plan, micro_batch, scored: list[dict]) -> tuple[dict[int, torch.Tensor], tuple]:
        """Log-probs of every sample's response under the current weights, computed with
        the same micro-batches as the update (so the first step's ratio is exactly 1),
        and the (mean, max) gap to the rollout engine's log-probs over all ranks."""
        net = self.engine.module
        was_training = net.training
        net.eval()  # no dropout in Qwen2.5-VL; eval only skips gradient checkpointing here
        out: dict[int, torch.Tensor] = {}
        total = count = 0.0
        worst = 0.0
        try:
            for step_plan in tqdm(plan, desc="old log-probs", disable=self.dist.rank != 0):
                for micro in step_plan[self.dist.rank]:
                    ids, weight, batch = micro_batch(micro)
                    lp = self.engine(**batch.forward_inputs())
                    for row, i in enumerate(ids):
                        out[i] = lp[row][batch.response_mask[row].bool()].detach()
                        ref = _rollout_logprobs(scored[i], False)
                        if weight and ref is not None:
                            d = (out[i].double() - torch.tensor(ref, dtype=torch.float64, device=lp.device)).abs()
                            total += float(d.sum())
                            count += d.numel()
                            worst = max(worst, float(d.max())) if d.numel() else worst
        finally:
            net.train(was_training)
        total, count = comm.all_reduce_values([total, count], op=comm.ReduceOp.SUM)
        worst, = comm.all_reduce_values([worst], op=comm.ReduceOp.MAX)
        gap = (total / count, worst) if count else (float("nan"), float("nan"))
        return out, gap

    def _clear_checkpoints(self, checkpoints: StepCheckpoints) -> None:
        """The pass is complete: its resume files are not needed."""
        comm.barrier()
        if self.dist.local_rank == 0:
            for sub in ("live", "restored"):
                shutil.rmtree(os.path.join(checkpoints.local_dir, sub), ignore_errors=True)
            try:
                os.rmdir(checkpoints.local_dir)  # only if nothing else is in it
            except OSError:
                pass

    # ---- saving ---------------------------------------------------------------------
    def save_hf(self, out_dir: str) -> None:
        """A consolidated Hugging Face checkpoint of the policy, written by rank 0
        (every rank must call it: under ZeRO-3 the weights are gathered from all)."""
        sd = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        if self.dist.rank == 0:
            if sd is not None:  # the wrapper's keys: keep the policy's, without the prefix
                sd = {k[len("policy."):]: v for k, v in sd.items() if k.startswith("policy.")}
                self.module.save_pretrained(out_dir, state_dict=sd, safe_serialization=True)
                save_processor(self.processor, out_dir)
            else:
                save_checkpoint(self.module, self.processor, out_dir)
        comm.barrier()

    def save_state(self, state_out: str) -> None:
        """The DeepSpeed state (all ranks) and the global step, for the next update."""
        self.engine.save_checkpoint(os.path.join(state_out, "ds"), tag="state", save_latest=True)
        if self.dist.rank == 0:
            with open(os.path.join(state_out, STATE_FILE), "w") as f:
                json.dump({"global_step": self.global_step, "total_steps": self.total_steps}, f)
        comm.barrier()

    def full_weights(self):
        """A context in which the policy holds its full weights with DeepSpeed's ZeRO-3
        hooks lifted, e.g. for generation on the live module (fast, and the fp32 LM head,
        which reads its weight outside the module's forward, sees it whole). Every rank
        must enter it. A no-op below stage 3."""
        import contextlib

        if self.zero_stage != 3:
            return contextlib.nullcontext()
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        return unwrap_model_for_generation(self.engine)

    def full_state_dict_iter(self):
        """(name, tensor) of the policy's full weights, one parameter group at a time.

        Under ZeRO-3 each group (the parameters of one layer) is gathered on every rank
        just for the time its tensors are consumed, so peak memory stays at one layer.
        The tensors are only valid until the next item is requested."""
        named = [(n, p) for n, p in self.module.named_parameters()]
        if self.zero_stage != 3:
            for n, p in named:
                yield n, p.detach()
            return
        import deepspeed

        for group in _layer_groups(named):
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
                for n, p in group:
                    yield n, p.detach()


def _layer_groups(named: list[tuple[str, torch.nn.Parameter]]) -> list[list[tuple[str, torch.nn.Parameter]]]:
    """Consecutive parameters grouped by layer: the name up to its first numeric part."""
    groups: list[list] = []
    last = None
    for n, p in named:
        parts = n.split(".")
        cut = next((i for i, s in enumerate(parts) if s.isdigit()), len(parts) - 1)
        k = ".".join(parts[: cut + 1])
        if k != last:
            groups.append([])
            last = k
        groups[-1].append((n, p))
    return groups


def run_update(*, cfg: SparkConfig, model_dir: str, ref_dir: str, prompts: list[dict], scored: list[dict],
               out_dir: str, state_in: str | None, state_out: str, phase: str,
               checkpoints: StepCheckpoints | None = None) -> dict:
    """One GRPO pass over `scored` (G rollouts per prompt), then the HF checkpoint to
    `out_dir` and the training state to `state_out`. Returns rank 0's metrics.

    With `checkpoints`, the pass saves resume checkpoints as it goes and continues from
    the newest one of the same pass if there is one ("resumed_steps" in the metrics)."""
    t0 = time.time()
    trainer = GRPOTrainer(cfg, model_dir, ref_dir, state_in=state_in)
    m = trainer.train_pass(prompts, scored, phase, checkpoints=checkpoints)
    trainer.save_hf(out_dir)
    trainer.save_state(state_out)
    m["seconds"] = time.time() - t0
    return m
