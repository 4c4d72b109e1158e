"""Does the embedded default learn? The pipeline's stages called in one process.

    python -m benchmarks.learning_sweep --set bootstrap.steps=400 --set train.lr=5e-4 \\
        --epochs 3 [--arm spark] [--no-rl]

Runs the same library functions as `pyflyte run workflows/spark.py spark` (tiny model,
warm start, held-out judge set, HF rollouts, verifier, recycling, DeepSpeed GRPO
update, evaluation) without Flyte, so one setting takes minutes, and prints per epoch
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
import time

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def _value(s: str):
    try:
        return json.loads(s)
    except ValueError:
        return s


def evaluate(cfg, model_dir: str, eval_rows: list[dict], judge_rows: list[dict]) -> dict:
    """The run's own evaluation (spark_core.evaluate.core.evaluate), keys without "eval/"."""
    from spark_core.evaluate.core import evaluate as run_evaluation
    from spark_core.rollout.hf import HFBackend

    _, metrics = run_evaluation(cfg, HFBackend(model_dir, cfg.model), eval_rows, judge_rows)
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/")}


def rollout_and_score(cfg, model_dir: str, rows: list[dict], tag: str, seed: int) -> list[dict]:
    """Rollout rows in the SCORED_ROLLOUTS shape the update and recycling read."""
    from spark_core.reward import score_batch
    from spark_core.rollout.base import SamplingSpec
    from spark_core.rollout.hf import HFBackend

    r = cfg.rollout
    backend = HFBackend(model_dir, cfg.model)
    spec = SamplingSpec(n=r.n_samples, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                        seed=seed)
    samples = backend.generate(rows, spec, desc=f"rollout[{tag}]")
    by_id = {row["prompt_id"]: row for row in rows}
    scores = score_batch([s.response for s in samples], [by_id[s.prompt_id]["answer"] for s in samples],
                         timeout_s=cfg.reward.timeout_s)
    return [
        {"prompt_id": s.prompt_id, "rollout_id": f"{s.prompt_id}#{tag}.{s.sample_index}",
         "kind": by_id[s.prompt_id]["kind"], "sample_index": s.sample_index, "answer": by_id[s.prompt_id]["answer"],
         "response": s.response, "prompt_token_ids": s.prompt_token_ids, "response_token_ids": s.response_token_ids,
         "old_logprobs": s.logprobs, "finish_reason": s.finish_reason, "reward": sc["reward"],
         "extracted": sc["extracted"], "verify_status": sc["status"]}
        for s, sc in zip(samples, scores)
    ]


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
    from spark_core.config import load_config
    from spark_core.data.batches import epoch_indices
    from spark_core.data.synthetic import synthetic_split
    from spark_core.evaluate.judge_set import build_judge_eval_set
    from spark_core.model.tiny import build_tiny
    from spark_core.recycle import recycle
    from spark_core.recycle.fifo import push_pop
    from spark_core.train.engine import run_update
    from spark_core.train.sft import run_bootstrap
    from spark_core.config import trained_passes

    cfg = load_config("tiny-cpu", json.dumps(dict(overrides, **{"epochs": epochs, "recycle.arm": arm})))
    times: dict[str, float] = {}

    def timed(name, fn, *a, **k):
        t0 = time.time()
        out = fn(*a, **k)
        times[name] = times.get(name, 0.0) + time.time() - t0
        return out

    train = timed("data", synthetic_split, cfg.data, "train")
    eval_rows = timed("data", synthetic_split, cfg.data, "eval")
    boot = {}
    if not start:
        base = timed("base_model", build_tiny, os.path.join(workdir, "base"), cfg.model)
        start = keep or os.path.join(workdir, "boot")
        boot = timed("bootstrap", run_bootstrap, cfg, base, train, start) if cfg.bootstrap.enabled else {}
        if not cfg.bootstrap.enabled:
            start = base
    judge_rows = timed("judge_eval_set", build_judge_eval_set, cfg, start, eval_rows)
    m = timed("evaluate", evaluate, cfg, start, eval_rows, judge_rows)
    hist = [dict(m, epoch=0, **{f"time/{k}": v for k, v in times.items()},
                 bootstrap_loss=boot.get("bootstrap_loss_last", float("nan")))]
    print(_line(hist[-1]), flush=True)
    if not rl:
        return hist
    passes = trained_passes(arm)
    policy, state, queue = start, None, []
    for e in range(epochs):
        times = {}
        row: dict = {"epoch": e + 1}
        idx = epoch_indices(len(train), e, cfg.rollout.prompts_per_epoch, cfg.seed)
        prompts = [train[i] for i in idx]
        scored = timed("rollout", rollout_and_score, cfg, policy, prompts, f"e{e}-policy", cfg.seed + 2 * e)
        row["reward/policy"] = sum(s["reward"] for s in scored) / len(scored)
        row["mixed/policy"] = _mixed(scored)
        if "policy" in passes:
            out = os.path.join(workdir, f"e{e}-policy")
            st = os.path.join(workdir, f"e{e}-policy-state")
            um = timed("update_policy", run_update, cfg=cfg, model_dir=policy, ref_dir=start, prompts=prompts,
                       scored=scored, out_dir=out, state_in=state, state_out=st, phase="policy")
            policy, state = out, st
            row["kl/policy"] = um["kl"]
        if arm != "policy":
            batch = cfg.recycle.recycled_batch or cfg.rollout.prompts_per_epoch
            new = recycle(prompts, scored, cfg.recycle, batch_size=batch, epoch=e)
            rec, queue = push_pop(queue, new, batch)
            if rec:
                rscored = timed("rollout", rollout_and_score, cfg, policy, rec, f"e{e}-recycled", cfg.seed + 2 * e + 1)
                row["reward/recycled"] = sum(s["reward"] for s in rscored) / len(rscored)
                row["mixed/recycled"] = _mixed(rscored)
                if "recycled" in passes:
                    out = os.path.join(workdir, f"e{e}-recycled")
                    st = os.path.join(workdir, f"e{e}-recycled-state")
                    timed("update_recycled", run_update, cfg=cfg, model_dir=policy, ref_dir=start, prompts=rec,
                          scored=rscored, out_dir=out, state_in=state, state_out=st, phase="recycled")
                    policy, state = out, st
        row.update(timed("evaluate", evaluate, cfg, policy, eval_rows, judge_rows))
        row.update({f"time/{k}": v for k, v in times.items()})
        hist.append(row)
        print(_line(row), flush=True)
    return hist


def _mixed(scored: list[dict]) -> float:
    """Share of prompts whose G rollouts are neither all right nor all wrong."""
    groups: dict[str, list[float]] = {}
    for s in scored:
        groups.setdefault(s["prompt_id"], []).append(s["reward"])
    return sum(0 < sum(v) < len(v) for v in groups.values()) / max(1, len(groups))


def _line(m: dict) -> str:
    keys = ["epoch", "accuracy", "answer_prob", "judge_accuracy", "judge_answer_prob",
            "judge_accuracy/pointwise", "judge_accuracy/pairwise",
            "reward/policy", "reward/recycled", "mixed/policy", "kl/policy"]
    parts = [f"{k}={m[k]:.3f}" if isinstance(m.get(k), float) else f"{k}={m.get(k)}" for k in keys if k in m]
    parts += [f"{k.split('/', 1)[1]}={m[k]:.2f}" for k in sorted(m) if k.startswith("accuracy/synthetic")]
    parts += [f"{k}={m[k]:.0f}s" for k in sorted(m) if k.startswith("time/")]
    return "  ".join(parts)


def table(results: list[tuple[dict, list[dict]]]) -> str:
    cols = ["setting", "epoch", "accuracy", "p(answer)", "judge", "p(verdict)", "pointwise", "pairwise", "reward", "mixed",
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
                m.get("judge_accuracy/pairwise"), m.get("reward/policy"), m.get("mixed/policy"), secs)) + " |")
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
