"""How much held-out accuracy can N training problems buy? A supervised upper reference.

    python benchmarks/supervised_control.py [--start CHECKPOINT] [--lr 1e-4 5e-4] \\
        [--prompts 64 256 1024 2048]

Continues the warm-started model with supervised steps on the training problems the
RL epochs would draw (in the same order), with their TRUE answers as targets, and
prints greedy held-out accuracy after each count of problems. GRPO sees the same
problems with a 0/1 reward on G samples instead of the answer, so it learns at most
this much from them: when N labelled problems do not raise held-out accuracy by 10
points, N problems of RL will not either. Steps use the trainer's optimizer settings
(AdamW with `train.adam_betas`, gradient norm clipped at 1, constant lr, a fresh
optimizer state as every RL run starts with) and batches of 32.

Without --start it warm-starts the tiny default first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

BATCH = 32


def control(cfg, start: str, train_rows: list[dict], eval_rows: list[dict], lr: float, counts: list[int],
            workdir: str, batch: int = BATCH) -> list[dict]:
    """Held-out accuracy after supervised steps on the first n of `train_rows`, n in `counts`."""
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
    brief = cfg.bootstrap.brief_targets
    done, losses, out = 0, [], []
    for n in sorted(set(counts)):
        while done < n:
            rows = train_rows[done : min(n, done + batch)]
            chunk = [(r, *encode_example(processor, r, worked_solution(r, brief=brief))) for r in rows]
            losses.append(sft_step(model, processor, chunk, opt))
            done += len(rows)
        ckpt = os.path.join(workdir, f"lr{lr:g}-n{n}")
        model.eval()
        save_checkpoint(model, processor, ckpt)
        model.train()
        acc = evaluate(cfg, ckpt, eval_rows, [])["accuracy"] if n else float("nan")
        out.append({"lr": lr, "prompts": n, "steps": len(losses), "accuracy": acc,
                    "loss_first": losses[0] if losses else float("nan"),
                    "loss_last": losses[-1] if losses else float("nan")})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="", help="a warm-started checkpoint (default: warm-start the tiny default)")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-4, 5e-4])
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 256, 1024, 2048])
    a = ap.parse_args(argv)

    from benchmarks.learning_sweep import evaluate, warm_start
    from spark_core.config import load_config
    from spark_core.data.batches import epoch_indices
    from spark_core.data.synthetic import synthetic_split

    cfg = load_config("tiny-cpu", "{}")
    train = synthetic_split(cfg.data, "train")
    eval_rows = synthetic_split(cfg.data, "eval")
    # the problems RL epochs 0, 1, 2, ... draw, in that order
    order = [train[i] for i in epoch_indices(len(train), 0, max(a.prompts), cfg.seed)]
    with tempfile.TemporaryDirectory(prefix="spark-supervised-control-") as wd:
        start = a.start or warm_start(cfg, train, wd)
        base = evaluate(cfg, start, eval_rows, [])["accuracy"]
        results = [r for lr in a.lr for r in control(cfg, start, order, eval_rows, lr, a.prompts, wd)]
    print(f"\nSupervised steps (batch {BATCH}, true answers) on the problems RL would draw; greedy accuracy "
          f"on {len(eval_rows)} held-out problems. Starting model: {base:.3f}.\n")
    print("| lr | problems | steps | held-out acc | change |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['lr']:g} | {r['prompts']} | {r['steps']} | {r['accuracy']:.3f} | {r['accuracy'] - base:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
