"""`spark-eval`: score a checkpoint directory on a benchmark file.

    spark-eval MODEL_DIR DATA_FILE [--tts-rounds [R]] [--out results.parquet] [--max-new-tokens N]

DATA_FILE is any file the loader accepts, usually the evaluation format
({dataset, problem, answer, image_path}). The printed accuracy is single-pass greedy
decoding, macro-averaged over benchmarks; self-reflection numbers, when asked for,
are printed in their own section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from spark_core.config import PRESETS, load_config
from spark_core.evaluate.compare import text_table


def _pct(v: float) -> str:
    return f"{v:.3f}"


def format_report(report: dict) -> str:
    lines = [f"model: {report['model_dir']}", f"data:  {report['data_path']}",
             f"decoding: greedy, max_new_tokens={report['max_new_tokens']}", ""]
    per = report["per_benchmark"]
    rows = [[d, str(p["n"]), str(p["correct"]), _pct(p["accuracy"])] for d, p in per.items()]
    rows.append(["macro average", str(report["n"]), str(sum(p["correct"] for p in per.values())),
                 _pct(report["accuracy"])])
    rows.append(["micro average", str(report["n"]), "", _pct(report["accuracy_micro"])])
    lines += ["Single pass (the headline number):", text_table(["benchmark", "n", "correct", "accuracy"], rows), ""]
    lines.append(f"unextracted (no \\boxed{{}} answer, counted wrong): {report['unextracted_count']} of {report['n']}")
    for u in report["unextracted"][:10]:
        lines.append(f"  - {u['dataset']}/{u['prompt_id']}: ...{u['response_tail'][-80:]!r}")
    if report["unextracted_count"] > 10:
        lines.append(f"  ... and {report['unextracted_count'] - 10} more (see the Parquet file)")
    lines.append(f"quarantined input rows (not evaluated): {report['n_quarantined']}"
                 + (f" by field {report['quarantine_by_field']}" if report["n_quarantined"] else ""))
    for q in report["quarantined"][:10]:
        lines.append(f"  - {q['reason']}")
    if "tts_accuracy" in report:
        tper = report["tts_per_benchmark"]
        trows = [[d, str(p["n"]), str(p["correct"]), _pct(p["accuracy"])] for d, p in tper.items()]
        trows.append(["macro average", str(report["n"]), str(sum(p["correct"] for p in tper.values())),
                      _pct(report["tts_accuracy"])])
        trows.append(["micro average", str(report["n"]), "", _pct(report["tts_accuracy_micro"])])
        lines += ["", f"Self-reflection TTS (at most {report['tts_rounds']} reflections; reported separately, "
                      "not comparable with single-pass baselines):",
                  text_table(["benchmark", "n", "correct", "tts_accuracy"], trows),
                  f"reflected: {report['tts_reflected']} of {report['n']}, mean attempts "
                  f"{report['tts_mean_rounds']:.2f}, wrong->right {report['tts_wrong_to_right']}, "
                  f"right->wrong {report['tts_right_to_wrong']}, "
                  f"unextracted {report['tts_unextracted_count']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spark-eval", description="Evaluate a checkpoint on a benchmark file.")
    ap.add_argument("model_dir", help="checkpoint directory (tiny model or a Qwen2.5-VL directory)")
    ap.add_argument("data_file", help=".json/.jsonl/.parquet benchmark file")
    ap.add_argument("--preset", default="tiny-cpu", choices=PRESETS,
                    help="model/eval settings (dtype, pixel limits, backend); default tiny-cpu")
    ap.add_argument("--overrides", default="", help='JSON of dotted config keys, e.g. \'{"model.dtype": "bfloat16"}\'')
    ap.add_argument("--tts-rounds", type=int, nargs="?", const=-1, default=0, metavar="R",
                    help="also run self-reflection with at most R reflections (no value: the preset's "
                         "eval.tts_rounds); reported separately")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's eval.max_new_tokens")
    ap.add_argument("--out", default="eval_results.parquet", help="per-sample results (EVAL_RESULTS schema)")
    ap.add_argument("--report", default=None, metavar="REPORT.json", help="also write the report as JSON")
    args = ap.parse_args(argv)

    from spark_core.data.loader import DataError
    from spark_core.evaluate.benchmark import evaluate_benchmark

    try:
        cfg = load_config(args.preset, args.overrides)
    except (ValueError, KeyError) as e:
        print(f"spark-eval: bad --overrides: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.model_dir):
        print(f"spark-eval: model directory {args.model_dir!r} does not exist", file=sys.stderr)
        return 2
    rounds = cfg.eval.tts_rounds if args.tts_rounds == -1 else args.tts_rounds
    if rounds < 0:
        print("spark-eval: --tts-rounds must be >= 0", file=sys.stderr)
        return 2
    try:
        results, report = evaluate_benchmark(args.model_dir, args.data_file, cfg, tts_rounds=rounds,
                                             max_new_tokens=args.max_new_tokens)
    except DataError as e:
        print(f"spark-eval: {e}", file=sys.stderr)
        return 2
    print(format_report(report))

    import pyarrow.parquet as pq

    from spark_core import schemas

    meta = {"model_dir": os.path.abspath(args.model_dir), "data_path": os.path.abspath(args.data_file),
            "max_new_tokens": str(report["max_new_tokens"]), "tts_rounds": str(rounds), "preset": args.preset}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pq.write_table(schemas.table(results, schemas.EVAL_RESULTS, meta), args.out)
    print(f"\nper-sample results: {args.out}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
