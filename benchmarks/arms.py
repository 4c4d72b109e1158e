"""The four ablation arms on the embedded default, at equal compute, over several seeds.

    python -m benchmarks.arms --seeds 3 --write-readme

prints, for each arm, the mean over seeds and a 95% t-interval of held-out accuracy and
of judge accuracy (pointwise, pairwise, all), then the spark-minus-policy differences
with a 95% Welch t-interval, and writes the same block to benchmarks/results/arms.md
(and into README.md between the `arms:begin`/`arms:end` markers with --write-readme).

Equal compute means the same rollouts and optimizer steps per epoch for every arm:
spark and policy_reward roll out P problems and P recycled prompts (G samples each)
and update on both; `policy` has no recycled pass, so it rolls out and trains on 2P
problems instead; `reward` rolls out the same P + P but trains only on the recycled
pass, so it makes two PPO epochs over it. The actual counts are read back from the
run's metrics and printed, since a recycled batch can come out short.

Seeds vary the RL loop only (`seed`: prompt order and rollout sampling, `recycle.seed`,
`train.seed`): the stages before the loop (data, tiny model, warm start, held-out judge
set) take no loop setting as inputs, so every arm and seed starts from the
same cached model and is measured on the same held-out sets. The held-out sets are
enlarged here (not in the default) so that a standard error is at most 0.02, and only
the start and the last epoch are evaluated (eval.every). Every finished arm-seed is
appended to a JSON-lines file, so an interrupted benchmark resumes with --resume.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import time

from spark_core.config import SparkConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARMS = ("policy", "reward", "policy_reward", "spark")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BEGIN, END = "<!-- arms:begin -->", "<!-- arms:end -->"
# the figures compared, as (label, metric key)
METRICS = (("held-out acc", "eval/accuracy"), ("judge acc", "eval/judge_accuracy"),
           ("pointwise", "eval/judge_accuracy/pointwise"), ("pairwise", "eval/judge_accuracy/pairwise"))

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: float) -> float:
    """t quantile for a 95% interval; a fractional (Welch) df is rounded down, which widens it."""
    if not df >= 1:
        return math.nan
    k = int(math.floor(df))
    return _T975[k - 1] if k <= len(_T975) else 1.96


def mean_ci(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds (NaN bounds with fewer than 2 values)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(xs) / n
    if n < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t975(n - 1) * sd / math.sqrt(n)
    return m, m - h, m + h


def diff_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a 95% Welch t-interval (the arms' seeds are independent runs)."""
    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    if len(a) < 2 or len(b) < 2:
        d = (sum(a) / len(a) - sum(b) / len(b)) if a and b else math.nan
        return d, math.nan, math.nan
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, ma - mb, ma - mb
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = t975(df) * se
    return ma - mb, ma - mb - h, ma - mb + h


def interval_verdict(d: float, lo: float, hi: float) -> str:
    """Whether a difference's interval excludes 0; an interval of zero width (every seed
    of both arms gave the same figure) supports no such claim."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    if hi - lo < 1e-9:
        return "no spread over seeds"
    return "yes" if lo > 0 or hi < 0 else "no"


# ---- running one arm-seed ---------------------------------------------------------------


def arm_overrides(arm: str, prompts: int, seed: int, eval_problems: int, epochs: int, extra: dict) -> dict:
    o = {"data.synthetic_eval": eval_problems, "eval.judge_samples": eval_problems, "eval.every": epochs}
    o.update(extra)
    o.update({"seed": seed, "recycle.seed": seed, "train.seed": seed, "rollout.prompts_per_epoch": prompts})
    if arm == "policy":
        o["rollout.prompts_per_epoch"] = 2 * prompts
    if arm == "reward":
        o["train.ppo_epochs"] = 2
    return o


def parse_metrics(stdout: str, tracking_uri: str) -> list[dict]:
    """One dict per epoch of the run whose summary pyflyte printed, read back from its
    MLflow run (step = epoch), as the workflow logged them."""
    from mlflow import MlflowClient

    m = re.search(r"MLflow run: +\S+ \(id ([0-9a-f]+)\)", stdout)
    if not m:
        raise ValueError("no 'MLflow run: ... (id ...)' line in the pyflyte output")
    client = MlflowClient(tracking_uri=tracking_uri)
    by_step: dict[int, dict] = {}
    for key in client.get_run(m.group(1)).data.metrics:
        for point in client.get_metric_history(m.group(1), key):
            by_step.setdefault(point.step, {})[key] = point.value
    return [by_step[s] for s in sorted(by_step)]


def run_one(arm: str, epochs: int, overrides: dict, env: dict) -> tuple[list[dict], float]:
    cmd = [sys.executable, "-m", "flytekit.clis.sdk_in_container.pyflyte", "run", "workflows/spark.py", "spark",
           "--arm", arm, "--epochs", str(epochs), "--overrides", json.dumps(overrides)]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-5000:])
        raise SystemExit(f"arm {arm} failed (exit code {p.returncode}); command: {' '.join(cmd)}")
    return parse_metrics(p.stdout, env["MLFLOW_TRACKING_URI"]), time.time() - t0


def summarize_run(arm: str, seed: int, hist: list[dict], seconds: float) -> dict:
    first, last = hist[0], hist[-1]
    row = {"arm": arm, "seed": seed, "minutes": seconds / 60,
           "rollouts": int(sum(m.get("policy/samples", 0) + m.get("recycled/samples", 0) for m in hist[1:])),
           "opt_steps": int(sum(m.get("policy/steps", 0) + m.get("recycled/steps", 0) for m in hist[1:]))}
    for _, key in METRICS:
        row[f"{key}@0"] = first.get(key, math.nan)
        row[key] = last.get(key, math.nan)
    return row


# ---- tables --------------------------------------------------------------------------------


def _interval(m: float, lo: float, hi: float, fmt=lambda x: f"{x:.3f}") -> str:
    """`m [lo, hi]`, `m` alone when the interval is undefined (one seed), `-` without m."""
    if not math.isfinite(m):
        return "-"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(m)
    return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def _ci(m: float, lo: float, hi: float) -> str:
    return _interval(m, lo, hi)


def _pts(m: float, lo: float, hi: float) -> str:
    """A difference of accuracies in points."""
    return _interval(m, lo, hi, fmt=lambda x: f"{100 * x:+.1f}")


def _md(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def report(rows: list[dict], command: str, eval_problems: int) -> str:
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in arms}
    header = ["arm", "seeds", "rollouts", "opt steps"] + [f"{label} (95% CI)" for label, _ in METRICS] + ["min/run"]
    table = []
    for a in arms:
        rs = by_arm[a]
        table.append([a, str(len(rs)), "/".join(sorted({str(r["rollouts"]) for r in rs})),
                      "/".join(sorted({str(r["opt_steps"]) for r in rs}))]
                     + [_ci(*mean_ci([r[k] for r in rs])) for _, k in METRICS]
                     + [f"{sum(r['minutes'] for r in rs) / len(rs):.1f}"])
    start = rows[0]
    start_line = ", ".join(f"{label} {start[f'{k}@0']:.3f}" for label, k in METRICS
                           if isinstance(start.get(f"{k}@0"), float) and math.isfinite(start[f"{k}@0"]))
    se = math.sqrt(0.25 / eval_problems)
    parts = [f"`{command}`", "",
             f"Each arm: mean over seeds of the last epoch's figures, with a 95% t-interval over seeds "
             f"(mean ± t(0.975, n-1)·sd/√n). Held-out sets: {eval_problems} problems, and "
             f"{2 * eval_problems} pointwise + {eval_problems} pairwise judge prompts (balanced labels), so the "
             f"standard error of one run's accuracy is at most {se:.3f} ({se * math.sqrt(0.5):.3f} for pointwise). "
             f"Starting model (epoch 0, shared by all runs): {start_line}.", "", _md(header, table)]
    if "spark" in by_arm and "policy" in by_arm:
        drows = []
        for label, k in METRICS:
            d = diff_ci([r[k] for r in by_arm["spark"]], [r[k] for r in by_arm["policy"]])
            excl = interval_verdict(*d)
            drows.append([label, _pts(*d), excl])
        parts += ["", "spark minus policy, in points (95% Welch t-interval over the two arms' seeds):", "",
                  _md(["figure", "difference", "interval excludes 0"], drows)]
    return "\n".join(parts)


def write_readme(block: str, path: str = os.path.join(ROOT, "README.md")) -> None:
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm (seed-base, seed-base+1, ...)")
    ap.add_argument("--seed-base", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=SparkConfig().epochs, help="default: the default run's")
    ap.add_argument("--prompts", type=int, default=SparkConfig().rollout.prompts_per_epoch,
                    help="problems per epoch (P); default: the default run's")
    ap.add_argument("--eval-problems", type=int, default=640,
                    help="held-out problems (and judge problems); 625+ keeps a standard error <= 0.02")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--overrides", default="{}", help="extra JSON overrides for every run")
    ap.add_argument("--out", default=os.path.join(RESULTS, "arms.md"), help="write the table (markdown) here")
    ap.add_argument("--runs-file", default=os.path.join(RESULTS, "arms_runs.jsonl"),
                    help="one JSON line per finished arm-seed")
    ap.add_argument("--resume", action="store_true", help="reuse arm-seeds already in --runs-file with these settings")
    ap.add_argument("--write-readme", action="store_true", help="replace the arms block in README.md")
    a = ap.parse_args(argv)
    extra = json.loads(a.overrides)
    settings = {"epochs": a.epochs, "prompts": a.prompts, "eval_problems": a.eval_problems, "overrides": extra}
    command = "python -m benchmarks.arms " + " ".join(
        [f"--seeds {a.seeds}", f"--epochs {a.epochs}", f"--prompts {a.prompts}", f"--eval-problems {a.eval_problems}"]
        + ([f"--seed-base {a.seed_base}"] if a.seed_base != 42 else [])
        + ([f"--arms {' '.join(a.arms)}"] if list(a.arms) != list(ARMS) else [])
        + ([f"--overrides '{a.overrides}'"] if extra else []))
    env = dict(os.environ, FLYTE_LOCAL_CACHE_ENABLED="true")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{os.path.join(ROOT, 'mlflow.db')}")

    done: dict[tuple[str, int], dict] = {}
    if a.resume and os.path.exists(a.runs_file):
        with open(a.runs_file) as f:
            for line in f:
                r = json.loads(line)
                if r.get("settings") == settings:
                    done[(r["arm"], r["seed"])] = r
    os.makedirs(os.path.dirname(os.path.abspath(a.runs_file)), exist_ok=True)
    rows = []
    seeds = [a.seed_base + i for i in range(a.seeds)]
    jobs = [(arm, s) for s in seeds for arm in a.arms]  # seed-major: every arm gets a seed before the next
    for i, (arm, seed) in enumerate(jobs, 1):
        if (arm, seed) in done:
            rows.append(done[(arm, seed)])
            continue
        o = arm_overrides(arm, a.prompts, seed, a.eval_problems, a.epochs, extra)
        print(f"[{i}/{len(jobs)}] {arm} seed {seed} ...", file=sys.stderr, flush=True)
        hist, secs = run_one(arm, a.epochs, o, env)
        r = summarize_run(arm, seed, hist, secs)
        r["settings"] = settings
        r["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        rows.append(r)
        with open(a.runs_file, "a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"[{i}/{len(jobs)}] {arm} seed {seed}: held-out acc {r['eval/accuracy']:.3f}, judge acc "
              f"{r['eval/judge_accuracy']:.3f} in {secs / 60:.1f} min", file=sys.stderr, flush=True)
        partial = report(rows, command, a.eval_problems)
        with open(a.out, "w") as f:  # rewritten after every run, so a partial benchmark leaves its table
            f.write(partial + ("\n" if len(rows) == len(jobs) else f"\n\n(partial: {len(rows)} of {len(jobs)} runs)\n"))
    block = report(rows, command, a.eval_problems)
    print(block)
    with open(a.out, "w") as f:
        f.write(block + "\n")
    if a.write_readme:
        write_readme(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
