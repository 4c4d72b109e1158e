"""The SPARK loop in one process, without Flyte: for quick local experiments.

    python -m spark_core.run --epochs 3 --set train.lr=5e-5 [--arm policy] [--out DIR]
    python -m spark_core.run --start DIR/start ...   # reuse a saved warm start

The same stages as `pyflyte run workflows/spark.py spark`, in the same order
(spark_core.epoch; rollouts sharded as the rollout tasks shard them, the DeepSpeed
update in this process, one rank), with plain rows and checkpoint directories
between them. Nothing is cached: each call recomputes what it is asked for. Prints
one line per epoch and, with --out, keeps every checkpoint and a metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from spark_core.config import PREFIX_SEED, SparkConfig, StageConfig, load_config
from spark_core.epoch import Carry, merge, run_epochs


class LocalStages:
    """Stage operations on rows and checkpoint directories (policy = a directory)."""

    def __init__(self, cfg: SparkConfig, *, workdir: str, start: str, train: list[dict], eval_prompts: list[dict],
                 judge_prompts: list[dict]):
        self.cfg, self.workdir, self.start = cfg, workdir, start
        self.train, self.eval_prompts, self.judge_prompts = train, eval_prompts, judge_prompts
        self.trace: list[tuple[str, int, Any]] = []  # (stage, epoch, what it chose), for tests and debugging

    def select(self, epoch: int) -> list[dict]:
        from spark_core.data.batches import select_prompts

        rows = select_prompts(self.cfg, self.train, epoch)
        self.trace.append(("select", epoch, [r["prompt_id"] for r in rows]))
        return rows

    def rollout(self, policy: str, prompts: list[dict], tag: str, seed: int, epoch: int) -> list[dict]:
        from spark_core.rollout.base import make_backend, rollout_rows, shard_seed

        r = self.cfg.rollout
        n = max(1, r.n_shards)
        backend = make_backend(r.backend, policy, self.cfg.model, r)
        # shard by shard, as the rollout tasks do, so the samples are the DAG's
        return [row for shard in range(n)
                for row in rollout_rows(self.cfg, backend, prompts[shard::n], tag, shard_seed(seed, shard),
                                        desc=f"rollout[{tag}:{shard}]")]

    def score(self, rollouts: list[dict], tag: str, epoch: int):
        from spark_core.reward.stage import score

        return score(self.cfg, rollouts, tag)

    def recycle(self, prompts: list[dict], scored: list[dict], epoch: int) -> list[dict]:
        from spark_core.recycle.stage import recycle

        return recycle(self.cfg, prompts, scored, epoch)

    def queue(self, queue: list[dict] | None, recycled: list[dict], epoch: int):
        from spark_core.recycle.stage import queue as fifo

        batch, rest = fifo(self.cfg, queue or [], recycled)
        self.trace.append(("queue", epoch, [r["prompt_id"] for r in batch]))
        return batch, rest

    def update(self, policy: str, state: str | None, prompts: list[dict], scored: list[dict], phase: str,
               epoch: int):
        from spark_core.train.engine import run_update
        from spark_core.train.metrics import pass_metrics

        if not scored:  # nothing recycled this epoch: the policy carries over
            return policy, state, {f"{phase}/steps": 0}
        out = os.path.join(self.workdir, f"e{epoch}-{phase}")
        state_out = out + "-state"
        m, steps = pass_metrics(phase, run_update(cfg=self.cfg, model_dir=policy, ref_dir=self.start,
                                                  prompts=prompts, scored=scored, out_dir=out, state_in=state,
                                                  state_out=state_out, phase=phase))
        self.trace.append(("update", epoch, (phase, [s["step"] for s in steps])))
        return out, state_out, m

    def evaluate(self, policy: str, epoch: int) -> dict:
        from spark_core.evaluate.core import evaluate
        from spark_core.rollout.hf import HFBackend

        _, m = evaluate(self.cfg, HFBackend(policy, self.cfg.model), self.eval_prompts, self.judge_prompts)
        return m

    def log(self, epoch: int, metrics: list[dict]) -> dict:
        m = merge(metrics)
        print(epoch_line(epoch, m), flush=True)
        return m


def prepare(cfg: SparkConfig, workdir: str, start: str = "") -> dict[str, Any]:
    """The stages before the loop: data, base model, warm start, held-out judge set and
    the starting model's evaluation (epoch 0), with the sections and seed the workflow's
    prefix tasks take. `start`: a warm-started checkpoint to use."""
    from spark_core.data.prepare import prepare_splits
    from spark_core.evaluate.core import evaluate
    from spark_core.evaluate.judge_set import build_judge_eval_set
    from spark_core.model.tiny import build_tiny
    from spark_core.rollout.hf import HFBackend
    from spark_core.train.sft import run_bootstrap

    t0 = time.time()
    train, eval_rows, _ = prepare_splits(cfg.data)
    boot: dict = {}
    if not start:
        base = cfg.model.path if cfg.model.path not in ("", "tiny") else build_tiny(os.path.join(workdir, "base"),
                                                                                     cfg.model)
        start = base
        if cfg.bootstrap.enabled:
            start = os.path.join(workdir, "start")
            boot = run_bootstrap(StageConfig("bootstrap", model=cfg.model, bootstrap=cfg.bootstrap, seed=PREFIX_SEED),
                                 base, train, start)
    judge_rows = build_judge_eval_set(StageConfig("judge_eval_set", model=cfg.model, eval=cfg.eval, reward=cfg.reward,
                                                  seed=PREFIX_SEED), start, eval_rows)
    _, m0 = evaluate(cfg, HFBackend(start, cfg.model), eval_rows, judge_rows)
    m0 = dict(m0, **boot)
    print(f"prepared in {time.time() - t0:.0f}s", flush=True)
    return {"train": train, "eval": eval_rows, "judge": judge_rows, "start": start, "metrics": m0}


def run(cfg: SparkConfig, workdir: str, start: str = "", epochs: int | None = None) -> tuple[list[dict], LocalStages]:
    """Prefix, then cfg.epochs epochs (or `epochs`): one merged metrics dict per epoch,
    epoch 0 (the starting model) first, and the stage operations (with their trace)."""
    p = prepare(cfg, workdir, start)
    print(epoch_line(0, p["metrics"]), flush=True)
    ops = LocalStages(cfg, workdir=workdir, start=p["start"], train=p["train"], eval_prompts=p["eval"],
                      judge_prompts=p["judge"])
    _, logs = run_epochs(cfg, ops, 0, cfg.epochs if epochs is None else epochs, Carry(p["start"], None, []))
    return [p["metrics"]] + logs, ops


LINE_KEYS = ("eval/accuracy", "eval/answer_prob", "eval/judge_accuracy", "eval/judge_answer_prob",
             "policy/reward_mean", "recycled/reward_mean", "policy/kl")


def epoch_line(epoch: int, m: dict) -> str:
    parts = [f"epoch {epoch}"] + [f"{k.split('/', 1)[1]}={m[k]:.3f}" if k.startswith("eval/") else f"{k}={m[k]:.3f}"
                                  for k in LINE_KEYS if isinstance(m.get(k), (int, float))]
    secs = sum(v for k, v in m.items() if k.startswith("time/") and isinstance(v, (int, float)))
    return "  ".join(parts + [f"{secs:.0f}s"])


def parse_value(s: str):
    """A --set value: JSON where it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(s)
    except ValueError:
        return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted config override, value parsed as JSON where it can be (any number)")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--arm", default="", help="policy | reward | policy_reward | spark (default: the preset's)")
    ap.add_argument("--start", default="", help="start from this warm-started checkpoint (skips the warm start)")
    ap.add_argument("--out", default="", help="keep checkpoints and metrics.jsonl here (default: a temp dir)")
    args = ap.parse_args(argv)
    fields: dict[str, Any] = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.epochs:
        fields["epochs"] = args.epochs
    if args.arm:
        fields["recycle.arm"] = args.arm
    cfg = load_config(args.preset, "", fields)
    with tempfile.TemporaryDirectory(prefix="spark-run-") as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        history, _ = run(cfg, out, args.start)
        if args.out:
            with open(os.path.join(out, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(dict(m, epoch=e)) + "\n" for e, m in enumerate(history))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
