"""How much held-out accuracy can N training problems buy? A supervised upper reference.

    python -m benchmarks.research.supervised_control [--start CHECKPOINT | --carry] [--lr 1e-4 5e-4] \\
        [--prompts 64 256 1024 2048] [--schedule constant|anneal] [--noise 1e-4 1e-3] [--set key=value]

Continues the warm-started model with supervised steps on the training problems the
RL epochs would draw (in the same order), with their TRUE answers as targets, and
prints greedy held-out accuracy after each count of problems. GRPO sees the same
problems with a 0/1 reward on G samples instead of the answer. Those rewards are a
function of the answer, so they tell the update no more about a problem than its answer
does: when N labelled problems do not raise held-out accuracy by 10 points, N problems
of RL are not expected to either (an information bound, not a law of optimizers; no RL
setting measured on this model has beaten it). Steps use the trainer's optimizer settings
(AdamW with `train.adam_betas`, gradient norm clipped at 1, constant lr, a fresh
optimizer state as every RL run starts with) and batches of 32. `--carry` continues the
warm start's own AdamW state instead (moments, step count and betas), so the first
steps are not those of a fresh optimizer. `--schedule anneal` gives each count of
problems its own run, warmed up to the rate and decayed over its steps much as the warm
start is (`annealed`): the strongest use of N labels measured here, hence the fewest problems any update
needs for a given gain. `--noise` adds a control that takes no step:
held-out accuracy after adding N(0, sigma^2) to every weight (two draws each), which
tells a model on a knife edge from one that only moves when pushed in a direction.

Without --start it warm-starts the tiny default first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

BATCH = 32


def annealed(step: int, steps: int) -> float:
    """lr multiplier at `step` (from 0) of an annealed run of `steps` steps: linear warm-up
    over its first tenth, then a linear decay whose last step is at 1/(steps - warm-up + 1)
    of the peak. Close to the warm start's schedule (`run_bootstrap`: 20 warm-up steps of
    200, then linear decay to a floor of 5%), but ending nearer zero."""
    warm = max(1, round(0.1 * steps))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1.0 - (step - warm + 1) / max(1, steps - warm + 1))


def control(cfg, start: str, train_rows: list[dict], eval_rows: list[dict], lr: float, counts: list[int],
            workdir: str, batch: int = BATCH, optimizer_state: str = "", schedule: str = "constant") -> list[dict]:
    """Held-out accuracy after supervised steps on the first n of `train_rows`, n in `counts`;
    `optimizer_state`: a saved AdamW state to continue (default: a fresh one).

    schedule "constant": one run at `lr`, scored after each n. "anneal": for each n its own
    run from `start`, warmed up to `lr` and decayed to 0 over its own steps, so every count
    ends annealed, as the warm start does (the strongest use of n labels tried here)."""
    if schedule == "anneal":
        return [r for n in sorted(set(counts))
                for r in _control_run(cfg, start, train_rows, eval_rows, lr, [n], workdir, batch,
                                      optimizer_state, anneal_steps=math.ceil(n / batch))]
    if schedule != "constant":
        raise ValueError(f"schedule {schedule!r}: 'constant' or 'anneal'")
    return _control_run(cfg, start, train_rows, eval_rows, lr, counts, workdir, batch, optimizer_state)


def _control_run(cfg, start: str, train_rows: list[dict], eval_rows: list[dict], lr: float, counts: list[int],
                 workdir: str, batch: int, optimizer_state: str, anneal_steps: int = 0) -> list[dict]:
    import torch

    from benchmarks.learning_sweep import evaluate
    from spark_core.data import worked_solution
    from spark_core.model.loading import load_model, load_processor, save_checkpoint
    from spark_core.train.sft import encode_example, sft_step

    if any(n > len(train_rows) for n in counts):
        raise ValueError(f"asked for {max(counts)} problems, {len(train_rows)} given")
    torch.manual_seed(cfg.train.seed)
    processor = load_processor(start, cfg.model)
    model = load_model(start, cfg.model, for_training=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.train.adam_betas), weight_decay=0.0)
    if optimizer_state:
        opt.load_state_dict(torch.load(optimizer_state))
        for g in opt.param_groups:
            g["lr"] = lr
    brief = cfg.bootstrap.brief_targets
    done, losses, out = 0, [], []
    for n in sorted(set(counts)):
        while done < n:
            if anneal_steps:
                for g in opt.param_groups:
                    g["lr"] = lr * annealed(len(losses), anneal_steps)
            rows = train_rows[done : min(n, done + batch)]
            chunk = [(r, *encode_example(processor, r, worked_solution(r, brief=brief))) for r in rows]
            losses.append(sft_step(model, processor, chunk, opt))
            done += len(rows)
        ckpt = os.path.join(workdir, f"lr{lr:g}-n{n}" + ("-carried" if optimizer_state else "")
                            + ("-annealed" if anneal_steps else ""))
        model.eval()
        save_checkpoint(model, processor, ckpt)
        model.train()
        m = evaluate(cfg, ckpt, eval_rows, []) if n else {}
        out.append({"lr": lr, "optimizer": "warm start's" if optimizer_state else "fresh",
                    "schedule": "anneal" if anneal_steps else "constant", "prompts": n,
                    "steps": len(losses), "accuracy": m.get("accuracy", float("nan")),
                    "answer_prob": m.get("answer_prob", float("nan")),
                    "loss_first": losses[0] if losses else float("nan"),
                    "loss_last": losses[-1] if losses else float("nan")})
        print(json.dumps(out[-1]), flush=True)
    return out


def perturbed(cfg, start: str, eval_rows: list[dict], sigma: float, seed: int, workdir: str) -> dict:
    """Held-out accuracy of the start with N(0, sigma^2) added to every weight."""
    import torch

    from benchmarks.learning_sweep import evaluate
    from spark_core.model.loading import load_model, load_processor, save_checkpoint

    model = load_model(start, cfg.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * sigma)
    ckpt = os.path.join(workdir, f"noise{sigma:g}-{seed}")
    save_checkpoint(model, load_processor(start, cfg.model), ckpt)
    out = {"sigma": sigma, "seed": seed, "accuracy": evaluate(cfg, ckpt, eval_rows, [])["accuracy"]}
    print(json.dumps(out), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="", help="a warm-started checkpoint (default: warm-start the tiny default)")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-4, 5e-4])
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 256, 1024, 2048])
    ap.add_argument("--carry", action="store_true",
                    help="continue the warm start's AdamW state (warm-starts here; not with --start)")
    ap.add_argument("--schedule", choices=["constant", "anneal"], default="constant",
                    help="constant lr, or for each count its own run warmed up to lr and decayed to 0")
    ap.add_argument("--optimizer-state", default="",
                    help="with --start: that checkpoint's saved AdamW state, to continue as --carry does")
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (config override), any number")
    ap.add_argument("--noise", type=float, nargs="*", default=[],
                    help="also score the start with N(0, sigma^2) added to every weight, for each sigma")
    a = ap.parse_args(argv)
    if a.carry and a.start:
        ap.error("--carry needs the warm start's optimizer state: leave out --start, or give --optimizer-state")
    if a.optimizer_state and not (a.start and os.path.isfile(a.optimizer_state)):
        ap.error(f"--optimizer-state {a.optimizer_state!r}: needs --start and an existing file")

    from benchmarks.learning_sweep import _value, evaluate, warm_start
    from spark_core.config import load_config
    from spark_core.data.batches import epoch_indices
    from spark_core.data.synthetic import synthetic_split

    cfg = load_config("tiny-cpu", json.dumps({k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}))
    train = synthetic_split(cfg.data, "train")
    eval_rows = synthetic_split(cfg.data, "eval")
    # the problems RL epochs 0, 1, 2, ... draw, in that order
    order = [train[i] for i in epoch_indices(len(train), 0, max(a.prompts), cfg.seed)]
    with tempfile.TemporaryDirectory(prefix="spark-supervised-control-") as wd:
        state = a.optimizer_state or (os.path.join(wd, "warm_start_optimizer.pt") if a.carry else "")
        start = a.start or warm_start(cfg, train, wd, optimizer_out=state)
        base_m = evaluate(cfg, start, eval_rows, [])
        base, base_p = base_m["accuracy"], base_m.get("answer_prob", float("nan"))
        results = [r for lr in a.lr for r in control(cfg, start, order, eval_rows, lr, a.prompts, wd,
                                                     optimizer_state=state, schedule=a.schedule)]
        noise = [perturbed(cfg, start, eval_rows, sigma, seed, wd) for sigma in a.noise for seed in (0, 1)]
    print(f"\nSupervised steps (batch {BATCH}, true answers) on the problems RL would draw; greedy accuracy "
          f"on {len(eval_rows)} held-out problems, and p(answer), the true answer's mean probability "
          f"(`eval.answer_likelihood_problems` of them). Starting model: {base:.3f}, p(answer) {base_p:.3f}.\n")
    print("| lr | optimizer | schedule | problems | steps | held-out acc | change | p(answer) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['lr']:g} | {r['optimizer']} | {r['schedule']} | {r['prompts']} | {r['steps']} "
              f"| {r['accuracy']:.3f} | {r['accuracy'] - base:+.3f} | {r['answer_prob']:.3f} |")
    if noise:
        print("\nNo step: N(0, sigma^2) added to every weight of the starting model.\n")
        print("| sigma | draw | held-out acc | change |")
        print("|---|---|---|---|")
        for r in noise:
            print(f"| {r['sigma']:g} | {r['seed']} | {r['accuracy']:.3f} | {r['accuracy'] - base:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
