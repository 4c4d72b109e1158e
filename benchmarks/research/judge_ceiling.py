"""Could the model judge better with what it already knows? A judge built on its own answers.

    python -m benchmarks.research.judge_ceiling [--start CHECKPOINT]

For the held-out judge set (the same problems, wrong answers and labels as the run's
judge evaluation), compares the model's judge verdicts with two judges that only use
the model as a solver:

- pointwise, self-consistent: "correct" exactly when the shown answer is the model's own
  greedy answer to the problem;
- pairwise, by likelihood: picks the answer the model is likelier to write as its
  boxed answer to the problem.

Their combined accuracy, weighted as the run's judge accuracy is (two pointwise prompts
and one pairwise per problem), is what the model would score as a judge if judging
used its solving; the gap to its judge accuracy is what judge training (the recycled
pointwise/pairwise prompts) can win without the model solving any better.

Without --start it warm-starts the tiny default first (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def ceiling(cfg, model_dir: str, eval_rows: list[dict]) -> dict:
    from spark_core.evaluate.core import greedy_results, summarize
    from spark_core.evaluate.judge_set import judge_draws, judge_prompts, starting_wrong_answers
    from spark_core.evaluate.likelihood import answer_logprobs
    from spark_core.rollout.hf import HFBackend

    rows = eval_rows[: cfg.eval.judge_samples]
    draws = judge_draws(rows, starting_wrong_answers(cfg, model_dir, rows), cfg.seed, cfg.reward.timeout_s)
    backend = HFBackend(model_dir, cfg.model)
    solved = greedy_results(backend, rows, cfg.eval.max_new_tokens, "single", cfg.reward.timeout_s, desc="eval:solve")
    judged = summarize(solved, greedy_results(backend, judge_prompts(draws), cfg.eval.max_new_tokens, "judge",
                                              cfg.reward.timeout_s, desc="eval:judge"))
    own = {r["prompt_id"]: (s.get("extracted") or "").strip() for r, s in zip(rows, solved)}
    own_right = {r["prompt_id"]: bool(s["correct"]) for r, s in zip(rows, solved)}
    processor, model = backend.processor, backend.model  # the solver's own weights, already loaded
    pointwise = pairwise = 0
    for d in draws:
        pid = d["row"]["prompt_id"]
        # "correct" on the truth when its own answer is right (by the verifier); "wrong" on
        # the wrong answer unless that is literally what it answers itself
        pointwise += own_right[pid] + (own[pid] != d["wrong"])
        lp_truth, lp_wrong = answer_logprobs(model, processor, [(d["row"], d["truth"]), (d["row"], d["wrong"])])
        pairwise += lp_truth > lp_wrong
    n = len(draws)
    out = {"problems": n, "solve_accuracy": sum(bool(s["correct"]) for s in solved) / n,
           "ceiling_pointwise": pointwise / (2 * n), "ceiling_pairwise": pairwise / n,
           "judge_pointwise": judged["judge_accuracy/pointwise"], "judge_pairwise": judged["judge_accuracy/pairwise"],
           "judge_accuracy": judged["judge_accuracy"],
           "rollout_wrong_share": sum(d["origin"] == "rollout" for d in draws) / n}
    out["ceiling_judge_accuracy"] = (2 * out["ceiling_pointwise"] + out["ceiling_pairwise"]) / 3
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="", help="a checkpoint (default: warm-start the tiny default)")
    a = ap.parse_args(argv)

    from benchmarks.learning_sweep import warm_start
    from spark_core.config import load_config
    from spark_core.data.synthetic import synthetic_split

    cfg = load_config("tiny-cpu", "{}")
    with tempfile.TemporaryDirectory(prefix="spark-judge-ceiling-") as wd:
        start = a.start or warm_start(cfg, synthetic_split(cfg.data, "train"), wd)
        m = ceiling(cfg, start, synthetic_split(cfg.data, "eval"))
    print(json.dumps(m))
    print(f"\nHeld-out judge set: {m['problems']} problems x (2 pointwise + 1 pairwise); the model solves "
          f"{m['solve_accuracy']:.3f} of them (greedy); {m['rollout_wrong_share']:.0%} of the wrong answers shown "
          f"are its own sampled ones.\n")
    print("| judge | pointwise | pairwise | judge acc |")
    print("|---|---|---|---|")
    print(f"| the model's verdicts | {m['judge_pointwise']:.3f} | {m['judge_pairwise']:.3f} | {m['judge_accuracy']:.3f} |")
    print(f"| built on its own answers | {m['ceiling_pointwise']:.3f} | {m['ceiling_pairwise']:.3f} | "
          f"{m['ceiling_judge_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
