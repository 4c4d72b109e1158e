"""How much of a rollout is noise from the vocabulary's tail, at each top-p.

    python -m benchmarks.research.rollout_tail --start DIR [--top-p 1.0 0.9 0.8] [--prompts 64] [--sort-filter]

Samples G=8 answers at temperature 1 from a checkpoint (default: the tiny default's
warm start, built first) on training problems and on judge prompts built from other
training problems the way the held-out judge set is, and prints for each top-p:

- well-formed: the share of samples that are exactly one `\\boxed{}` holding a number
  (solve) or a verdict of the prompt's kind (judge), with nothing around it;
- reward: the verifier's mean reward;
- seconds: the rollout's wall time (the HF backend's top-p filter included). With
  `--sort-filter` each top-p below 1 is also timed with transformers' own top-p filter,
  which sorts the whole vocabulary of every row at every step, in place of the
  backend's `NucleusFilter` (same nucleus, same samples).

A sample with a stray token scores 0 whatever answer it gives, so in a group of G the
answer tokens of an otherwise right sample get a negative advantage. A small model that
spreads its probability thinly over 152k tokens loses many samples this way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

WELL_FORMED = {"solve": r"\\boxed\{-?\d+\}", "judge": r"\\boxed\{(Yes|No|A|B)\}"}


class SortFilter:
    """transformers' TopPLogitsWarper in NucleusFilter's place (for timing only)."""

    def __init__(self, top_p: float, temperature: float = 1.0):
        from transformers import TopPLogitsWarper

        self.warper, self.temperature = TopPLogitsWarper(top_p), temperature

    def __call__(self, input_ids, scores):
        import torch

        kept = self.warper(input_ids, scores / self.temperature)
        return scores.masked_fill(torch.isinf(kept), float("-inf"))


def measure(cfg, start: str, rows: dict[str, list[dict]], top_ps: list[float], seed: int = 7,
            sort_filter: bool = False) -> list[dict]:
    import spark_core.rollout.hf as hf
    from spark_core.reward import score_batch
    from spark_core.rollout.base import SamplingSpec

    backend = hf.HFBackend(start, cfg.model)
    runs = [(p, "topk") for p in top_ps] + ([(p, "sort") for p in top_ps if p < 1.0] if sort_filter else [])
    out = []
    for top_p, how in runs:
        backend.top_p_filter = SortFilter if how == "sort" else hf.NucleusFilter
        for kind, prompts in rows.items():
            spec = SamplingSpec(n=cfg.rollout.n_samples, temperature=1.0, top_p=top_p,
                                max_new_tokens=cfg.rollout.max_new_tokens, seed=seed)
            t0 = time.time()
            samples = backend.generate(prompts, spec, desc=f"{kind} top_p={top_p}")
            secs = time.time() - t0
            label = {p["prompt_id"]: p["answer"] for p in prompts}
            scores = score_batch([s.response for s in samples], [label[s.prompt_id] for s in samples],
                                 timeout_s=cfg.reward.timeout_s)
            formed = sum(bool(re.fullmatch(WELL_FORMED[kind], s.response.strip())) for s in samples)
            out.append({"top_p": top_p, "filter": how if top_p < 1.0 else "-", "prompts": kind, "samples": len(samples),
                        "well_formed": formed / len(samples),
                        "reward": sum(sc["reward"] for sc in scores) / len(scores), "seconds": secs})
            print(json.dumps(out[-1]), flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| top_p | filter | prompts | samples | well-formed | reward | seconds |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['top_p']:g} | {r['filter']} | {r['prompts']} | {r['samples']} | {r['well_formed']:.3f} | "
                     f"{r['reward']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", default="", help="a checkpoint (default: warm-start the tiny default first)")
    ap.add_argument("--top-p", type=float, nargs="+", default=[1.0, 0.9])
    ap.add_argument("--prompts", type=int, default=64, help="solve prompts; judge prompts come from half as many problems")
    ap.add_argument("--sort-filter", action="store_true", help="also time transformers' sorting top-p filter")
    a = ap.parse_args(argv)

    from benchmarks.learning_sweep import warm_start
    from spark_core.config import load_config
    from spark_core.data.synthetic import synthetic_split
    from spark_core.evaluate.judge_set import build_judge_eval_set

    cfg = load_config("tiny-cpu")
    train = synthetic_split(cfg.data, "train")
    with tempfile.TemporaryDirectory(prefix="spark-tail-") as wd:
        start = a.start or warm_start(cfg, train, wd)
        # the last training problems for solving, the ones before them for judging
        solve = train[-a.prompts:]
        judge = build_judge_eval_set(cfg, start, train[-a.prompts - a.prompts // 2:-a.prompts])
        results = measure(cfg, start, {"solve": solve, "judge": judge}, a.top_p, sort_filter=a.sort_filter)
    print(f"\nG={cfg.rollout.n_samples} samples per prompt at temperature 1 ({a.prompts} solve prompts, "
          f"{len(judge)} judge prompts)\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
