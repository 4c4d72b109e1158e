"""The GRPO update on a DeepSpeed engine, run once per rank (torchrun / Flyte Elastic).

`GRPOTrainer` keeps the engine alive across passes (a fused rollout+update segment
calls `train_pass` repeatedly); `run_update` is one pass plus the saves. Inputs are
plain lists of artifact rows; outputs are a Hugging Face checkpoint (rank 0 writes it),
the DeepSpeed training state (optimizer moments and global step, so the next update
continues the same optimizer and schedule), and per-step metrics. docs/cluster.md
("Trainer numerics") says how pi_old, the loss normalisation, the batch plan, ZeRO-3,
precision and skipped steps are handled.

Resume: with `checkpoints` (spark_core.checkpoint), the engine saves its whole state
every few optimizer steps and, when it starts, continues from the newest checkpoint of
the same pass (same rollouts, same starting step) instead of redoing finished steps.
The step plan depends only on the seed and the starting step, so skipping by step index
gives the same result as an uninterrupted pass.

The learning rate comes from GRPOSchedule (spark_core/train/schedule.py); faults are
injected through callbacks (spark_core/train/callbacks.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from tqdm.auto import tqdm

from spark_core.checkpoint import Checkpoints, Pointer, Ranks, ResumeSlots, checkpoint_key, load_rng_state, \
    save_rng_state
from spark_core.config import SparkConfig, total_optimizer_steps, validate_train_batch
from spark_core.memory_budget import effective_zero_stage
from spark_core.model.loading import load_model, load_processor, save_checkpoint, save_processor
from spark_core.model.logprobs import ResponseLogprobs, build_batch
from spark_core.train import collectives as comm
from spark_core.train.callbacks import StepEnd, TrainerCallback, faults_from_env
from spark_core.train.grpo import grpo_loss, group_advantages
from spark_core.train.schedule import GRPOSchedule

STATE_FILE = "spark_trainer_state.json"
RESUME_FILE = "spark_resume.json"
# a pass's resume pointer; the DeepSpeed checkpoint of a slot sits under its tag
RESUME_POINTER = Pointer(RESUME_FILE, key="pass_key", count="steps_done", tag="tag")

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: str


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if int(os.environ["WORLD_SIZE"]) == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            # one rank and no launcher: no peer needs to agree on the port, and one left in
            # the environment by a parent process that ran an update itself is still bound
            os.environ["MASTER_PORT"] = str(free_port())
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


@dataclass
class PassPlan:
    """What one pass trains on, fixed before its first step."""

    phase: str
    scored: list[dict]
    by_id: dict[str, dict]  # prompt_id -> prompt row
    adv: list[float]  # group advantage of each scored row
    order: list[int]  # scored rows, shuffled by the seed and the starting step
    steps: list[list[list[int]]]  # per optimizer step and rank: micro-batches of positions in `order`
    n_steps: int  # optimizer steps of the pass (len(steps) x ppo_epochs)
    key: str  # identity of the pass: only the same pass resumes its checkpoints


@dataclass
class PassProgress:
    """How far a pass got; what its resume pointer records."""

    done: int  # optimizer steps of this pass taken (by an earlier attempt included)
    global_step: int
    steps_log: list[dict] = field(default_factory=list)
    bad_run: int = 0  # consecutive non-finite steps
    resumed: int = 0  # steps restored from a checkpoint instead of recomputed


def _on_all_ranks(found: dict | None) -> dict | None:
    """The resume checkpoint when every rank found the same one, else none (start the pass over)."""
    n = found["steps_done"] if found else 0
    lo, neg_hi = comm.all_reduce_values([n, -n], op=comm.ReduceOp.MIN)
    if int(lo) != -int(neg_hi):
        log.warning("ranks found different resume checkpoints (steps %d..%d); starting the pass over",
                    int(lo), -int(neg_hi))
        return None
    return found


class GRPOTrainer:
    """A DeepSpeed GRPO trainer that stays alive across passes (one per rank).

    `__init__` joins the process group, builds the policy and the frozen reference,
    wraps the policy in a DeepSpeed engine and loads the optimizer state and global
    step of `state_in`. `train_pass` runs one GRPO pass; `save_hf` and `save_state`
    write the consolidated Hugging Face checkpoint and the DeepSpeed state.
    `callbacks` (TrainerCallback) see every pass, e.g. the faults a test injects.
    """

    def __init__(self, cfg: SparkConfig, model_dir: str, ref_dir: str, state_in: str | None = None,
                 total_steps: int | None = None, callbacks: list[TrainerCallback] | None = None):
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
        # on the torch optimizer inside DeepSpeed's wrapper, whose step reads its lr
        self.schedule = GRPOSchedule(self.engine.basic_optimizer, cfg.train, self.total_steps, self.global_step)
        self.callbacks = list(callbacks or [])

    @property
    def module(self) -> torch.nn.Module:
        """The live policy (a Hugging Face model), e.g. for generation between passes.
        Under ZeRO-3 its parameters are shards: generate with synced_gpus=True when the
        world has more than one rank."""
        return self.engine.module.policy

    # ---- one pass -------------------------------------------------------------------
    def train_pass(self, prompts: list[dict], scored: list[dict], phase: str,
                   checkpoints: Checkpoints | None = None) -> dict:
        """One GRPO pass over `scored` (G rollouts per prompt). Returns rank 0's metrics.

        With `checkpoints`, the pass saves resume checkpoints as it goes and continues from
        the newest one of the same pass if there is one ("resumed_steps" in the metrics);
        they are removed once the pass is complete."""
        t0 = time.time()
        plan = self._plan_pass(prompts, scored, phase)
        slots = self._resume_slots(checkpoints, plan.key) if checkpoints is not None else None
        resume = slots.find() if slots is not None else None
        # pi_old: recomputed with the trainer's own model at the start of the pass (before
        # any resume checkpoint is loaded, so a resumed pass sees the same values).
        old_lp, gap = self._behaviour_logprobs(plan)
        progress = self._resume(resume, phase) if resume is not None else PassProgress(0, self.global_step)
        self.schedule.seek(progress.global_step, self.cfg.train.recycled_lr_scale if phase == "recycled" else 1.0)
        for cb in self.callbacks:
            cb.on_pass_start(self, phase)
        k = 0  # optimizer steps of this pass, 1-based once taken
        for _ in range(self.cfg.train.ppo_epochs):
            for step_plan in tqdm(plan.steps, desc=f"update[{phase}]", disable=self.dist.rank != 0):
                k += 1
                if k <= progress.done:
                    continue  # finished before the restart
                self._optimizer_step(plan, step_plan[self.dist.rank], old_lp, progress)
                progress.done = k
                if slots is not None and checkpoints.every > 0 and k % checkpoints.every == 0 and k < plan.n_steps:
                    self._save_resume(slots, plan, progress)
                end = StepEnd(phase, k, progress.global_step - 1, progress.steps_log[-1]["skipped"])
                for cb in self.callbacks:
                    cb.on_step_end(self, end)
        if slots is not None:
            slots.clear()
        return self._pass_metrics(plan, progress, gap, t0)

    def _plan_pass(self, prompts: list[dict], scored: list[dict], phase: str) -> PassPlan:
        """Advantages, sample order and micro-batches of a pass: from its inputs, the seed
        and the starting step only, so a resumed pass rebuilds the same plan."""
        cfg, start_step = self.cfg, self.global_step
        by_id = {p["prompt_id"]: p for p in prompts}
        missing = sorted({s["prompt_id"] for s in scored} - set(by_id))
        if missing:
            raise KeyError(f"rollouts refer to prompts not in the prompt artifact: {missing[:5]}")
        adv = group_advantages([s["prompt_id"] for s in scored], [float(s["reward"]) for s in scored])
        order = list(range(len(scored)))
        random.Random(cfg.train.seed + start_step).shuffle(order)
        lengths = [len(scored[i]["prompt_token_ids"]) + len(scored[i]["response_token_ids"]) for i in order]
        steps = _plan_steps(len(order), cfg.train.micro_batch_size, self.ds_config["gradient_accumulation_steps"],
                            self.dist.world, lengths=lengths, token_budget=cfg.train.micro_batch_tokens,
                            packed=cfg.train.packed)
        key = checkpoint_key([phase, start_step, self.dist.world, cfg.train.ppo_epochs],
                             ([s["prompt_id"], list(s["response_token_ids"]), float(s["reward"])] for s in scored))
        return PassPlan(phase, scored, by_id, adv, order, steps, len(steps) * cfg.train.ppo_epochs, key)

    def _micro_batch(self, plan: PassPlan, micro: list[int]):
        """(sample indices, weight, batch on the device) of one micro-batch of the plan."""
        weight = 1.0
        if not micro:  # an empty share of the last step: keep lockstep, contribute nothing
            micro, weight = [0], 0.0
        ids = [plan.order[i] for i in micro]
        rows = [plan.scored[i] for i in ids]
        batch = build_batch(self.processor, [plan.by_id[r["prompt_id"]] for r in rows],
                            [list(r["prompt_token_ids"]) for r in rows],
                            [list(r["response_token_ids"]) for r in rows]).to(self.dist.device)
        return ids, weight, batch

    @torch.no_grad()
    def _behaviour_logprobs(self, plan: PassPlan) -> tuple[dict[int, torch.Tensor], tuple]:
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
            for step_plan in tqdm(plan.steps, desc="old log-probs", disable=self.dist.rank != 0):
                for micro in step_plan[self.dist.rank]:
                    ids, weight, batch = self._micro_batch(plan, micro)
                    lp = self.engine(**batch.forward_inputs())
                    for row, i in enumerate(ids):
                        out[i] = lp[row][batch.response_mask[row].bool()].detach()
                        ref = _rollout_logprobs(plan.scored[i], False)
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

    def _optimizer_step(self, plan: PassPlan, micros: list[list[int]], old_lp: dict[int, torch.Tensor],
                        progress: PassProgress) -> None:
        """One optimizer step over this rank's micro-batches, logged in `progress`."""
        lr = self.schedule.get_last_lr()[0]
        # SPARK's token mean is over the optimizer step: every micro-batch's token sum
        # is divided by the step's response-token count over all micro-batches and ranks
        step_tokens, = comm.all_reduce_values(
            [float(sum(len(plan.scored[plan.order[i]]["response_token_ids"]) for m in micros for i in m))],
            op=comm.ReduceOp.SUM)
        stats: list[dict] = []
        bad = False
        for j, micro in enumerate(micros):
            # the step ends with its last micro-batch, however many the plan made
            # (a token budget gives each step its own count, not the config's ga)
            self.engine.set_gradient_accumulation_boundary(j == len(micros) - 1)
            st, bad = self._micro_step(plan, micro, old_lp, step_tokens, progress.global_step, bad)
            if st is not None:
                stats.append(st)
        grad_norm, bad = self._check_step(bad, progress.global_step)
        self._log_step(plan.phase, progress, stats, grad_norm, lr, bad)
        progress.global_step += 1
        self.global_step = progress.global_step
        self.schedule.step()  # taken or skipped, the step moves the schedule on
        if progress.bad_run >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"{progress.bad_run} consecutive optimizer steps had a non-finite loss or gradient "
                f"(last at global step {progress.global_step - 1}); stopping. The last good checkpoint is "
                f"the input of this update: {self.model_dir}"
            )

    def _micro_step(self, plan: PassPlan, micro: list[int], old_lp: dict[int, torch.Tensor], step_tokens: float,
                    global_step: int, bad: bool) -> tuple[dict | None, bool]:
        """Loss and backward of one micro-batch: (its stats, None for a filler; whether
        the step is bad so far)."""
        cfg, engine = self.cfg, self.engine
        ids, weight, batch = self._micro_batch(plan, micro)
        logp = engine(**batch.forward_inputs())
        mask = batch.response_mask.bool()
        old = torch.zeros_like(logp)
        old[mask] = torch.cat([old_lp[i] for i in ids])
        is_weight = None
        if cfg.train.tis_cap > 0:  # truncated importance sampling: pi_old(trainer) / pi(rollout engine)
            rollout = torch.zeros_like(logp)
            rollout[mask] = torch.tensor([x for i in ids for x in _rollout_logprobs(plan.scored[i], True)],
                                         dtype=logp.dtype, device=logp.device)
            is_weight = torch.exp(old - rollout).clamp(max=cfg.train.tis_cap) * mask
        ref_lp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_lp = self.ref(**batch.forward_inputs())
        a = torch.tensor([plan.adv[i] for i in ids], device=logp.device)
        loss, st = grpo_loss(logp, old, ref_lp, a, batch.response_mask, cfg.train.eps_clip,
                             cfg.train.kl_coef, is_weight=is_weight, denom=step_tokens)
        for cb in self.callbacks:
            loss = cb.on_loss(self, global_step, loss)
        loss, st, bad = self._check_loss(loss, st, bad)
        # DeepSpeed averages gradients over the data-parallel ranks: x world undoes
        # that (the loss is already normalised by the step's global token count),
        # and scale_wrt_gas=False keeps it from dividing by the accumulation steps.
        engine.backward(loss * (weight * self.dist.world), scale_wrt_gas=False)
        engine.step()
        return (st if weight else None), bad

    # ---- the non-finite guard: a bad step is dropped whole, on every rank -----------
    def _check_loss(self, loss: torch.Tensor, st: dict, bad: bool) -> tuple[torch.Tensor, dict, bool]:
        """A non-finite loss on any rank makes the step bad; a bad step's every loss is
        NaN from then on."""
        finite, = comm.all_reduce_values([1.0 if torch.isfinite(loss) else 0.0], op=comm.ReduceOp.MIN)
        if finite < 1.0:
            bad = True
            st = {k: (v if k == "tokens" else float("nan")) for k, v in st.items()}
        if bad:
            # Poison the step's gradient on every rank: DeepSpeed then takes its own
            # overflow path, which drops the gradient and leaves the weights, Adam's
            # moments and its step count untouched (lr 0 would still move the moments).
            loss = loss * float("nan")
        return loss, st, bad

    def _check_step(self, bad: bool, global_step: int) -> tuple[float, bool]:
        """(gradient norm, whether the step was skipped) once the optimizer has run."""
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not bad and not math.isfinite(grad_norm):
            bad = True  # ZeRO's optimizer found non-finite gradients and skipped the update
        if bad and math.isfinite(grad_norm):
            raise RuntimeError(f"global step {global_step} had a non-finite loss but DeepSpeed applied it "
                               f"(gradient norm {grad_norm}); refusing to continue with corrupted weights")
        return grad_norm, bad

    # ---- logging ----------------------------------------------------------------------
    @staticmethod
    def _log_step(phase: str, progress: PassProgress, stats: list[dict], grad_norm: float, lr: float,
                  bad: bool) -> None:
        progress.bad_run = progress.bad_run + 1 if bad else 0
        n_tok = sum(s["tokens"] for s in stats)
        mean = lambda k: (float("nan") if bad or not n_tok  # noqa: E731
                          else float(sum(s[k] * s["tokens"] for s in stats) / n_tok))
        progress.steps_log.append({"step": progress.global_step, "phase": phase, "loss": mean("loss"),
                                   "pg_loss": mean("pg_loss"), "kl": mean("kl"), "clip_frac": mean("clip_frac"),
                                   "grad_norm": grad_norm, "lr": 0.0 if bad else lr, "skipped": bad})

    def _pass_metrics(self, plan: PassPlan, progress: PassProgress, gap: tuple, t0: float) -> dict:
        steps_log = progress.steps_log
        kept = [s for s in steps_log if not s["skipped"]]
        agg = lambda k: float(sum(s[k] for s in kept) / len(kept)) if kept else float("nan")  # noqa: E731
        return {
            "phase": plan.phase,
            "steps": len(steps_log),
            "skipped_steps": sum(s["skipped"] for s in steps_log),
            "loss": agg("loss"),
            "pg_loss": agg("pg_loss"),
            "kl": agg("kl"),
            "clip_frac": agg("clip_frac"),
            "grad_norm": agg("grad_norm"),
            "lr": steps_log[-1]["lr"] if steps_log else 0.0,
            "global_step": progress.global_step,
            "resumed_steps": progress.resumed,
            # |log pi_old(trainer) - log pi(rollout engine)| over the pass's response tokens
            "rollout_logprob_gap_mean": gap[0],
            "rollout_logprob_gap_max": gap[1],
            "seconds": time.time() - t0,
            "world_size": self.dist.world,
            "step_log": steps_log,
        }

    # ---- resume checkpoints (spark_core.checkpoint) -----------------------------------
    def _resume_slots(self, checkpoints: Checkpoints, key: str) -> ResumeSlots:
        """The pass's slots under checkpoints.local_dir/live, shared by the ranks of each node."""
        d = self.dist
        return ResumeSlots(checkpoints, key, RESUME_POINTER, Ranks(d.rank, d.local_rank, comm.barrier, _on_all_ranks),
                           subdir="live")

    def _save_resume(self, slots: ResumeSlots, plan: PassPlan, progress: PassProgress) -> None:
        """The engine (all ranks) and each rank's RNG into a slot; the pass's progress in its pointer."""
        def write(root: str, tag: str) -> None:
            self.engine.save_checkpoint(root, tag=tag, save_latest=False,
                                        client_state={"spark_steps_done": progress.done})
            save_rng_state(os.path.join(root, tag, f"rng_rank{self.dist.rank}.pt"))

        slots.save(progress.done, write, {"phase": plan.phase, "global_step": progress.global_step,
                                          "steps_log": progress.steps_log, "bad_run": progress.bad_run,
                                          "world": self.dist.world})

    def _resume(self, resume: dict, phase: str) -> PassProgress:
        """Load a resume checkpoint into the engine; the progress it records."""
        load_dir, tag = resume["load_dir"], resume["tag"]
        _, client = self.engine.load_checkpoint(load_dir, tag=tag, load_module_strict=True,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
        if (client or {}).get("spark_steps_done") != resume["steps_done"]:
            raise RuntimeError(f"resume checkpoint {load_dir}/{tag} holds step "
                               f"{(client or {}).get('spark_steps_done')}, its state file says {resume['steps_done']}")
        load_rng_state(os.path.join(load_dir, tag, f"rng_rank{self.dist.rank}.pt"))
        done = int(resume["steps_done"])
        if self.dist.rank == 0:
            log.warning("update[%s]: resuming after %d finished optimizer steps (global step %d)", phase, done,
                        int(resume["global_step"]))
        return PassProgress(done, int(resume["global_step"]), list(resume["steps_log"]), int(resume["bad_run"]),
                            resumed=done)

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
               checkpoints: Checkpoints | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """One GRPO pass over `scored` (G rollouts per prompt), then the HF checkpoint to
    `out_dir` and the training state to `state_out`. Returns rank 0's metrics.

    With `checkpoints`, the pass saves resume checkpoints as it goes and continues from
    the newest one of the same pass if there is one ("resumed_steps" in the metrics).
    `callbacks` default to the faults the environment asks for (faults_from_env)."""
    t0 = time.time()
    trainer = GRPOTrainer(cfg, model_dir, ref_dir, state_in=state_in,
                          callbacks=faults_from_env() if callbacks is None else callbacks)
    m = trainer.train_pass(prompts, scored, phase, checkpoints=checkpoints)
    trainer.save_hf(out_dir)
    trainer.save_state(state_out)
    m["seconds"] = time.time() - t0
    return m
