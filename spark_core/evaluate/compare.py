"""`spark-compare`: runs (e.g. ablation arms) side by side from MLflow.

    spark-compare [--experiment spark] [--runs RUN_ID ...] [--metrics eval/accuracy ...] [--plot out.png]
                  [--include-reruns]

One row per run: name, arm (param recycle.arm), status, and the first (epoch 0) and
last logged value of each metric. A rerun that only replayed cached stages (tagged
``spark.rerun_of`` by the workflow) is left out, since it trained nothing new; with
--include-reruns it is listed, marked "rerun of <id>".
"""

from __future__ import annotations

import argparse
import math
import sys

from spark_core.tracking import EXPERIMENT, RERUN_TAG, tracking_uri

DEFAULT_METRICS = ("eval/accuracy", "eval/judge_accuracy")


class CompareError(RuntimeError):
    pass


def collect(experiment: str = EXPERIMENT, run_ids: list[str] | None = None,
            metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS, include_reruns: bool = False) -> list[dict]:
    """[{run_id, run_name, arm, status, rerun_of, start_time, metrics: {name: [(step, value), ...]}}],
    oldest first. Cached reruns are left out unless `include_reruns` (or named in `run_ids`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except Exception as e:  # MlflowException for an unknown id
                raise CompareError(f"run {rid!r} not found at {tracking_uri()}: {e}") from e
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise CompareError(f"experiment {experiment!r} not found at {tracking_uri()}")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000)
    out = []
    for run in runs:
        rid = run.info.run_id
        rerun_of = run.data.tags.get(RERUN_TAG, "")
        if rerun_of and not include_reruns and not run_ids:
            continue
        hist = {}
        for m in metrics:
            pts = client.get_metric_history(rid, m) if m in run.data.metrics else []
            # the latest write wins when a step was logged twice (e.g. a resumed run)
            by_step = {p.step: p.value for p in sorted(pts, key=lambda p: (p.step, p.timestamp))}
            hist[m] = sorted(by_step.items())
        out.append({
            "run_id": rid,
            "run_name": run.info.run_name or run.data.tags.get("mlflow.runName", ""),
            "arm": run.data.params.get("recycle.arm", run.data.tags.get("arm", "")),
            "status": f"rerun of {rerun_of}" if rerun_of else run.info.status,
            "rerun_of": rerun_of,
            "start_time": run.info.start_time,
            "metrics": hist,
        })
    return sorted(out, key=lambda r: r["start_time"] or 0)


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def compare_table(runs_data: list[dict]) -> str:
    """Plain-text table: one row per run, first and last value of each metric."""
    metrics: list[str] = []
    for r in runs_data:
        metrics += [m for m in r["metrics"] if m not in metrics]
    header = ["run_id", "run_name", "arm", "status"]
    for m in metrics:
        header += [f"{m} first", f"{m} last"]
    rows = []
    for r in runs_data:
        row = [r["run_id"], r["run_name"], r["arm"], r["status"]]
        for m in metrics:
            pts = r["metrics"].get(m) or []
            row += [_fmt(pts[0][1]) if pts else "-", _fmt(pts[-1][1]) if pts else "-"]
        rows.append(row)
    return text_table(header, rows)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot(runs_data: list[dict], out_path: str) -> str:
    """PNG with one subplot per metric and one line per run."""
    fig = figure(runs_data)
    fig.savefig(out_path, format="png", dpi=90)
    return out_path


def figure(runs_data: list[dict]):
    """The comparison figure: one subplot per metric, one line per run, whole-number epochs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from spark_core.evaluate.report import whole_epoch_ticks

    metrics: list[str] = []
    for r in runs_data:
        metrics += [m for m in r["metrics"] if m not in metrics]
    n = max(1, len(metrics))
    fig = Figure(figsize=(5.5, 3.0 * n))
    FigureCanvasAgg(fig)
    for i, m in enumerate(metrics or ["(no metrics)"]):
        ax = fig.add_subplot(n, 1, i + 1)
        for r in runs_data:
            pts = r["metrics"].get(m) or []
            if pts:
                label = f"{r['arm'] or '?'} · {r['run_name'] or r['run_id'][:8]}"
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=label)
        ax.set_title(m)
        ax.set_xlabel("epoch")
        whole_epoch_ticks(ax, [s for r in runs_data for s, _ in r["metrics"].get(m) or []])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spark-compare", description="Compare SPARK runs logged to MLflow "
                                 "(tracking URI from MLFLOW_TRACKING_URI, default ./mlflow.db).")
    ap.add_argument("--experiment", default=EXPERIMENT, help="experiment name (ignored with --runs)")
    ap.add_argument("--runs", nargs="+", metavar="RUN_ID", help="compare these runs (default: all in the experiment)")
    ap.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC")
    ap.add_argument("--plot", metavar="OUT.png", help="also write the metric curves to this PNG")
    ap.add_argument("--include-reruns", action="store_true",
                    help="also list runs that only replayed cached stages (tagged spark.rerun_of)")
    args = ap.parse_args(argv)
    try:
        data = collect(args.experiment, args.runs, args.metrics, include_reruns=True)
    except CompareError as e:
        print(f"spark-compare: {e}", file=sys.stderr)
        return 2
    if not data:
        print(f"spark-compare: no runs in experiment {args.experiment!r} at {tracking_uri()}", file=sys.stderr)
        return 1
    skipped = [] if args.include_reruns or args.runs else [r for r in data if r["rerun_of"]]
    data = [r for r in data if r not in skipped]
    if not data:
        print(f"spark-compare: only cached reruns in experiment {args.experiment!r}; --include-reruns lists them",
              file=sys.stderr)
        return 1
    print(compare_table(data))
    if skipped:
        print(f"({len(skipped)} cached rerun(s) left out: they repeat an earlier run; --include-reruns lists them)")
    if args.plot:
        print(f"plot written to {plot(data, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
