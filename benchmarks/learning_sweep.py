"""Does the embedded default learn? The pipeline's stages called in one process.

    python -m benchmarks.learning_sweep --set bootstrap.steps=400 --set train.lr=5e-4 \\
        --epochs 3 [--arm spark] [--no-rl]

Each setting runs spark_core.run, the in-process driver of the pipeline's own epoch
(spark_core/epoch.py: the stages of `pyflyte run workflows/spark.py spark`, without
Flyte), so one setting takes minutes; prints per epoch
held-out accuracy (per task), judge accuracy (pointwise/pairwise), rollout reward,
and the seconds each stage took. `--set` takes dotted config keys (any number);
values are parsed as JSON where they can be. Several `--grid key=v1,v2` make a sweep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

from spark_core.run import parse_value as _value  # noqa: E402 (after the thread count; research scripts import it)


def evaluate(cfg, model_dir: str, eval_rows: list[dict], judge_rows: list[dict]) -> dict:
    """The run's own evaluation (spark_core.evaluate.core.evaluate), keys without "eval/"."""
    from spark_core.evaluate.core import evaluate as run_evaluation
    from spark_core.rollout.hf import HFBackend

    _, metrics = run_evaluation(cfg, HFBackend(model_dir, cfg.model), eval_rows, judge_rows)
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/")}


def rollout_and_score(cfg, model_dir: str, rows: list[dict], tag: str, seed: int) -> list[dict]:
    """SCORED_ROLLOUTS rows of `model_dir` on `rows`, as the loop's rollout and reward stages make them."""
    from spark_core.run import LocalStages

    ops = LocalStages(cfg, workdir="", start=model_dir, train=[], eval_prompts=[], judge_prompts=[])
    return ops.score(ops.rollout(model_dir, rows, tag, seed, 0), tag, 0)[0]


def warm_start(cfg, train_rows: list[dict], workdir: str, optimizer_out: str = "") -> str:
    """Build the tiny base model and warm-start it as the run does; the checkpoint's path
    (`optimizer_out`: also save the warm start's AdamW state there)."""
    from spark_core.model.tiny import build_tiny
    from spark_core.train.sft import run_bootstrap

    start = os.path.join(workdir, "start")
    run_bootstrap(cfg, build_tiny(os.path.join(workdir, "base"), cfg.model), train_rows, start, optimizer_out)
    return start


def run_one(overrides: dict, epochs: int, arm: str, rl: bool, workdir: str, start: str = "",
            keep: str = "") -> list[dict]:
    """One setting through spark_core.run (the pipeline's epoch): per-epoch rows with
    the keys `table` reads. `keep`: also copy the warm start there, for --start."""
    import shutil

    from spark_core.config import load_config
    from spark_core.run import run

    cfg = load_config("tiny-cpu", json.dumps(dict(overrides, **{"epochs": epochs, "recycle.arm": arm})))
    history, ops = run(cfg, workdir, start, epochs=epochs if rl else 0)
    if keep and not start:
        shutil.copytree(ops.start, keep, dirs_exist_ok=True)
    rows = []
    for e, m in enumerate(history):
        row = {"epoch": e, **{k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("eval/")}}
        row.update({k: v for k, v in m.items() if k.startswith("time/")})
        row["reward/policy"] = m.get("policy/reward_mean")
        rows.append(row)
    return rows


def table(results: list[tuple[dict, list[dict]]]) -> str:
    cols = ["setting", "epoch", "accuracy", "p(answer)", "judge", "p(verdict)", "pointwise", "pairwise", "reward",
            "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    f = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    for over, hist in results:
        name = " ".join(f"{k}={v}" for k, v in over.items()) or "defaults"
        for m in hist:
            secs = sum(v for k, v in m.items() if k.startswith("time/"))
            lines.append("| " + " | ".join(f(v) for v in (
                name, m["epoch"], m.get("accuracy"), m.get("answer_prob"), m.get("judge_accuracy"),
                m.get("judge_answer_prob"), m.get("judge_accuracy/pointwise"),
                m.get("judge_accuracy/pairwise"), m.get("reward/policy"), secs)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], help="dotted.key=value (config override)")
    ap.add_argument("--grid", action="append", default=[], help="dotted.key=v1,v2,... (one run per value)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arm", default="spark")
    ap.add_argument("--no-rl", action="store_true", help="warm start and epoch-0 evaluation only")
    ap.add_argument("--start", default="", help="start from this warm-started checkpoint (skips the warm start)")
    ap.add_argument("--keep-start", default="", help="save the warm-started checkpoint here, for --start")
    args = ap.parse_args(argv)
    base = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    grid = [[(k, _value(x)) for x in v.split(",")] for k, v in (g.split("=", 1) for g in args.grid)]
    results = []
    for combo in itertools.product(*grid) if grid else [()]:
        over = dict(base, **dict(combo))
        print(f"== {json.dumps(over)} arm={args.arm}", flush=True)
        with tempfile.TemporaryDirectory(prefix="spark-sweep-") as wd:
            results.append((over, run_one(over, args.epochs, args.arm, not args.no_rl, wd, args.start,
                                          args.keep_start)))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
