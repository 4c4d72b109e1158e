"""Does the GRPO update move the policy? The same trainer on two rewards, same prompts.

    python -m benchmarks.research.rl_signal [--start CHECKPOINT] [--rounds 3] [--lr 2e-4]

Repeats rollout -> score -> GRPO update on one fixed set of training problems, with
the pipeline's own HF backend, verifier and DeepSpeed trainer, under two rewards:

- `verifier`: the run's reward (the boxed answer checked against the problem's label);
- `fixed answer`: the same verifier with every label replaced by one answer (default
  "2"), a preference that does not depend on the image.

and prints the mean reward of each round's rollouts (before that round's update).
The second column separates "the trainer does not train" from "this reward carries
too little signal for this model": if the fixed-answer reward rises and the verifier
reward does not, the update works and the policy cannot yet tell the images apart
well enough for 8 samples per problem to show it which answers are right.

Without --start it warm-starts the tiny default first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile



def rounds_of(cfg, start: str, rows: list[dict], label: str | None, rounds: int, workdir: str) -> list[dict]:
    """Reward and update stats per round; `label` replaces every problem's answer."""
    from benchmarks.learning_sweep import rollout_and_score
    from spark_core.train.engine import run_update

    rows = [dict(r, answer=label) for r in rows] if label is not None else rows
    policy, state, out = start, None, []
    for k in range(rounds + 1):
        scored = rollout_and_score(cfg, policy, rows, f"{label or 'verifier'}:{k}", cfg.seed + k)
        row = {"round": k, "reward": sum(s["reward"] for s in scored) / len(scored)}
        if k < rounds:
            nxt, st = os.path.join(workdir, f"{label}-{k}"), os.path.join(workdir, f"{label}-{k}-state")
            m = run_update(cfg=cfg, model_dir=policy, ref_dir=start, prompts=rows, scored=scored, out_dir=nxt,
                           state_in=state, state_out=st, phase="policy")
            policy, state = nxt, st
            row.update(kl=m["kl"], clip_frac=m["clip_frac"])
        out.append(row)
        print(json.dumps({"reward_kind": label or "verifier", **row}), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="", help="a warm-started checkpoint (default: warm-start the tiny default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--label", default="2", help="the fixed answer of the second reward")
    a = ap.parse_args(argv)

    from benchmarks.learning_sweep import warm_start
    from spark_core.config import load_config
    from spark_core.data.synthetic import synthetic_split

    cfg = load_config("tiny-cpu", json.dumps({"train.lr": a.lr, "epochs": a.rounds, "recycle.arm": "policy",
                                              "rollout.prompts_per_epoch": a.prompts}))
    rows = synthetic_split(cfg.data, "train")
    with tempfile.TemporaryDirectory(prefix="spark-rl-signal-") as wd:
        start = a.start or warm_start(cfg, rows, wd)
        fixed = rows[: a.prompts]
        verifier = rounds_of(cfg, start, fixed, None, a.rounds, wd)
        preference = rounds_of(cfg, start, fixed, a.label, a.rounds, wd)
    print(f"\nGRPO on {a.prompts} fixed problems x G={cfg.rollout.n_samples}, lr {a.lr:g}: mean reward of each "
          f"round's rollouts (round k = after k updates)\n")
    print(f"| round | verifier reward | fixed answer \"{a.label}\" reward |")
    print("|---|---|---|")
    for v, p in zip(verifier, preference):
        print(f"| {v['round']} | {v['reward']:.3f} | {p['reward']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
