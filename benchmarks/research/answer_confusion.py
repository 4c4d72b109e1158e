"""Which answers does the model give, per source and true answer? And which answer classes
flipped between two checkpoints?

    python -m benchmarks.research.answer_confusion --start CKPT [--against LATER_CKPT] [--problems 400]

For each source of the held-out problems (the tiny default's tasks), a table of counts:
a row per true answer, a column per greedy answer ("-" when none could be extracted).
A model that reads its images puts the counts on the diagonal; one that reads them
coarsely spreads each row over neighbouring answers.

With --against, the classes (source, true answer) whose greedy accuracy changed by at
least half of their problems from --start to --against, with the answer most given
after. Greedy held-out accuracy jumps between epochs when whole classes flip at once
(docs/tiny-default.md: every 6 of total_dots answered 5 after one policy pass).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

NONE = "-"  # no \boxed{} answer could be extracted


def _given(r: dict) -> str:
    return (r.get("extracted") or "").strip() or NONE


def _key(answer) -> tuple:
    """Numbers in numeric order, then anything else."""
    s = str(answer)
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def confusion(results: list[dict]) -> dict[str, dict[str, Counter]]:
    """source -> true answer -> Counter of greedy answers, from `greedy_results` rows."""
    out: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in results:
        out[r["dataset"]][str(r["answer"]).strip()][_given(r)] += 1
    return out


def confusion_table(rows: dict[str, Counter]) -> list[str]:
    """Markdown lines: a row per true answer, a column per greedy answer."""
    truths = sorted(rows, key=_key)
    given = sorted({g for c in rows.values() for g in c}, key=_key)
    lines = ["| true \\ greedy | " + " | ".join(given) + " | right |", "|---" * (len(given) + 2) + "|"]
    for t in truths:
        c = rows[t]
        lines.append(f"| {t} | " + " | ".join(str(c.get(g, 0)) for g in given) + f" | {c.get(t, 0)}/{sum(c.values())} |")
    return lines


def flipped_classes(before: list[dict], after: list[dict], min_change: float = 0.5) -> list[dict]:
    """Classes (source, true answer) whose share answered right changed by >= min_change.

    `before` and `after` are greedy results on the same problems (matched by prompt_id)."""
    prior = {r["prompt_id"]: r for r in before}
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = defaultdict(list)
    for r in after:
        if r["prompt_id"] in prior:
            groups[(r["dataset"], str(r["answer"]).strip())].append((prior[r["prompt_id"]], r))
    out = []
    for (src, truth), pairs in sorted(groups.items(), key=lambda kv: (kv[0][0], _key(kv[0][1]))):
        was = sum(bool(b["correct"]) for b, _ in pairs) / len(pairs)
        now = sum(bool(a["correct"]) for _, a in pairs) / len(pairs)
        if abs(now - was) >= min_change:
            most, count = Counter(_given(a) for _, a in pairs).most_common(1)[0]
            out.append({"source": src, "truth": truth, "problems": len(pairs), "right_before": was,
                        "right_after": now, "most_given_after": most, "most_given_count": count})
    return out


def greedy(cfg, model_dir: str, rows: list[dict]) -> list[dict]:
    from spark_core.evaluate.core import greedy_results
    from spark_core.rollout.hf import HFBackend

    backend = HFBackend(model_dir, cfg.model)
    return greedy_results(backend, rows, cfg.eval.max_new_tokens, "single", cfg.reward.timeout_s, desc="eval:solve")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", required=True, help="a checkpoint directory")
    ap.add_argument("--against", default="", help="a later checkpoint: list the answer classes that flipped")
    ap.add_argument("--problems", type=int, default=400, help="synthetic held-out problems (the learn preset's 400)")
    a = ap.parse_args(argv)

    from spark_core.config import load_config
    from spark_core.data.synthetic import synthetic_split
    from spark_core.evaluate.core import accuracy_by

    cfg = load_config("tiny-cpu", json.dumps({"data.synthetic_eval": a.problems}))
    rows = synthetic_split(cfg.data, "eval")
    first = greedy(cfg, a.start, rows)
    shown = greedy(cfg, a.against, rows) if a.against else first
    acc = accuracy_by(shown, "dataset")  # the verifier's verdicts, as the run's per-source figures
    for src, table in sorted(confusion(shown).items()):
        print(f"\n### {src}: greedy answers ({a.against or a.start}), accuracy {acc[src]:.3f}\n")
        print("\n".join(confusion_table(table)))
    if a.against:
        flips = flipped_classes(first, shown)
        print(f"\n### Answer classes that flipped from {a.start} to {a.against}\n")
        print("| source | true answer | problems | right before | right after | most given after |")
        print("|---|---|---|---|---|---|")
        for f in flips:
            print(f"| {f['source']} | {f['truth']} | {f['problems']} | {f['right_before']:.2f} | {f['right_after']:.2f} "
                  f"| {f['most_given_after']} ({f['most_given_count']}) |")
        if not flips:
            print("| (none) | | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
