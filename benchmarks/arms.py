"""The four ablation arms on the embedded default, at equal compute, as a table.

    python benchmarks/arms.py --epochs 4 [--out benchmarks/results/arms.md]

Equal compute means the same rollouts and optimizer steps per epoch for every arm:
spark and policy_reward roll out P problems and P recycled prompts (G samples each)
and update on both; `policy` has no recycled pass, so it rolls out and trains on 2P
problems instead; `reward` rolls out the same P + P but trains only on the recycled
pass, so it makes two PPO epochs over it. The actual counts are read back from the
run's metrics and printed, since a recycled batch can come out short.

The stages before the epoch loop (data, tiny model, warm start, judge set) are shared
by all arms through Flyte's local cache, so every arm starts from the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("policy", "reward", "policy_reward", "spark")


def arm_overrides(arm: str, prompts: int, extra: dict) -> dict:
    o = dict(extra)
    o["rollout.prompts_per_epoch"] = prompts
    if arm == "policy":
        o["rollout.prompts_per_epoch"] = 2 * prompts
    if arm == "reward":
        o["train.ppo_epochs"] = 2
    return o


def run_arm(arm: str, epochs: int, overrides: dict, env: dict) -> tuple[list[dict], float]:
    cmd = [sys.executable, "-m", "flytekit.clis.sdk_in_container.pyflyte", "run", "workflows/spark.py", "spark",
           "--arm", arm, "--epochs", str(epochs), "--overrides", json.dumps(overrides)]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-5000:])
        raise SystemExit(f"arm {arm} failed")
    out = p.stdout
    metrics = out[out.index("metrics='") + len("metrics='"):]
    metrics = metrics[: metrics.index("', quarantine=")]
    return json.loads(metrics), time.time() - t0


def summarize(arm: str, hist: list[dict], seconds: float) -> dict:
    first, last = hist[0], hist[-1]
    g = lambda m, k: m.get(k, float("nan"))  # noqa: E731
    return {
        "arm": arm,
        "rollouts": int(sum(m.get("policy/samples", 0) + m.get("recycled/samples", 0) for m in hist[1:])),
        "opt_steps": int(sum(m.get("policy/steps", 0) + m.get("recycled/steps", 0) for m in hist[1:])),
        "acc_before": g(first, "eval/accuracy"), "acc_after": g(last, "eval/accuracy"),
        "pointwise_before": g(first, "eval/judge_accuracy/pointwise"),
        "pointwise_after": g(last, "eval/judge_accuracy/pointwise"),
        "pairwise_before": g(first, "eval/judge_accuracy/pairwise"),
        "pairwise_after": g(last, "eval/judge_accuracy/pairwise"),
        "minutes": seconds / 60,
    }


def table(rows: list[dict]) -> str:
    cols = ["arm", "rollouts", "opt_steps", "acc_before", "acc_after", "pointwise_before", "pointwise_after",
            "pairwise_before", "pairwise_after", "minutes"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16, help="problems per epoch (P)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--overrides", default="{}", help="extra JSON overrides for every arm")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    a = ap.parse_args(argv)
    env = dict(os.environ, FLYTE_LOCAL_CACHE_ENABLED="true")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{os.path.join(ROOT, 'mlflow.db')}")
    rows = []
    for arm in a.arms:
        hist, secs = run_arm(arm, a.epochs, arm_overrides(arm, a.prompts, json.loads(a.overrides)), env)
        rows.append(summarize(arm, hist, secs))
        print(f"{arm}: done in {secs / 60:.1f} min", file=sys.stderr, flush=True)
    out = table(rows)
    print(out)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(f"epochs={a.epochs} prompts={a.prompts} overrides={a.overrides}\n\n{out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
