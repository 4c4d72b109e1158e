"""A self-contained HTML report of a run: metric curves over epochs and result tables.

Plots are PNGs embedded as base64, so the page works as a Flyte Deck or a saved file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Iterable

# (title, exact keys, key prefixes whose sub-keys are drawn too)
PANELS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("Solve accuracy (eval)", ("eval/accuracy", "eval/accuracy_micro"), ()),
    ("Solve accuracy by source (eval)", (), ("eval/accuracy/",)),
    ("Judge accuracy (eval)", ("eval/judge_accuracy",), ("eval/judge_accuracy/",)),
    ("True answer's / right verdict's probability (eval)", ("eval/answer_prob", "eval/judge_answer_prob"), ()),
    ("Reward mean", ("policy/reward_mean", "recycled/reward_mean"), ()),
    ("KL to reference", ("policy/kl", "recycled/kl"), ()),
]


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def fmt(v) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.3f}"


def _panel_keys(history: list[dict], exact: Iterable[str], prefixes: Iterable[str]) -> list[str]:
    present = {k for h in history for k, v in h.items() if _num(v) is not None}
    keys = [k for k in exact if k in present]
    for p in prefixes:
        keys += sorted(k for k in present if k.startswith(p) and k not in keys)
    return keys


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def whole_epoch_ticks(ax, epochs: Iterable[int]) -> None:
    """Epoch ticks at whole numbers only: every epoch when there are few, else an
    integer locator (which alone would fall back to fractions on a one-epoch axis)."""
    from matplotlib.ticker import MaxNLocator

    xs = sorted({int(e) for e in epochs})
    if not xs:
        return
    if xs[-1] - xs[0] < 12:
        ax.set_xticks(range(xs[0], xs[-1] + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs[0] == xs[-1]:
        ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)


def epoch_figure(title: str, keys: list[str], history: list[dict]):
    """One panel: each key's value over the epochs where it was logged."""
    # Figure without pyplot: no global backend state, safe in threads and task pods
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for k in keys:
        pts = [(e, _num(h.get(k))) for e, h in enumerate(history)]
        pts = [(e, v) for e, v in pts if v is not None]
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", label=k)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    whole_epoch_ticks(ax, range(len(history)))
    return fig


def _plot(title: str, keys: list[str], history: list[dict]) -> str:
    return _png(epoch_figure(title, keys, history))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """<style>
.spark-report{font-family:sans-serif;font-size:14px}
.spark-report table{border-collapse:collapse;margin:8px 0}
.spark-report td,.spark-report th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.spark-report td:nth-child(2){text-align:right;font-family:monospace}
.spark-report img{margin:4px}
</style>"""


def deck_html(history: list[dict], per_benchmark: dict[str, float] | None = None) -> str:
    """HTML with epoch curves of the present metrics, per-benchmark and latest-metric tables.

    history[i] is the merged metrics dict of epoch i (keys such as "eval/accuracy").
    """
    history = [h for h in (history or []) if isinstance(h, dict)]
    parts = [_STYLE, '<div class="spark-report">', "<h2>SPARK run</h2>"]
    imgs = []
    for title, exact, prefixes in PANELS:
        keys = _panel_keys(history, exact, prefixes)
        if keys:
            imgs.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_plot(title, keys, history)}"/>')
    parts.append("<div>" + "".join(imgs) + "</div>" if imgs else "<p>No curves: no metrics logged yet.</p>")
    if per_benchmark:
        vals = [v for v in (_num(x) for x in per_benchmark.values()) if v is not None]
        rows = [(name, fmt(v)) for name, v in sorted(per_benchmark.items())]
        if vals:
            rows.append(("macro average", fmt(sum(vals) / len(vals))))
        parts += ["<h3>Per-benchmark accuracy (single pass, last epoch)</h3>", _table(("benchmark", "accuracy"), rows)]
    if history:
        latest = history[-1]
        rows = [(k, fmt(v)) for k, v in sorted(latest.items()) if _num(v) is not None]
        parts += [f"<h3>Latest metrics (epoch {len(history) - 1})</h3>", _table(("metric", "value"), rows)]
    parts.append("</div>")
    return "\n".join(parts)


# ---- the end-of-run summary, as plain text -------------------------------------------

# (column header, metric key)
SUMMARY_COLUMNS = (("held-out acc", "eval/accuracy"), ("p(answer)", "eval/answer_prob"),
                   ("judge acc", "eval/judge_accuracy"), ("p(verdict)", "eval/judge_answer_prob"),
                   ("pointwise", "eval/judge_accuracy/pointwise"), ("pairwise", "eval/judge_accuracy/pairwise"),
                   ("policy reward", "policy/reward_mean"), ("recycled reward", "recycled/reward_mean"))


def _change(history: list[dict], key: str) -> str | None:
    pts = [v for v in (_num(h.get(key)) for h in history) if v is not None]
    if len(pts) < 2:
        return None
    return f"{pts[0]:.3f} -> {pts[-1]:.3f} ({100 * (pts[-1] - pts[0]):+.1f} points)"


def _by_source(history: list[dict]) -> list[str]:
    """Held-out accuracy per source, start to end: where a run gains and where it is
    stuck (a mean over sources can stay put while one source gains and another loses)."""
    prefix = "eval/accuracy/"
    rows = [(k[len(prefix):], c) for k in _panel_keys(history, (), (prefix,)) if (c := _change(history, k))]
    if len(rows) < 2:  # one source: the line above already says it
        return []
    width = max(len(name) for name, _ in rows) + 2
    return ["", "held-out accuracy by source:"] + [f"  {name:<{width}}{c}" for name, c in rows]


def run_summary(history: list[dict], *, arm: str, preset: str, seed: int, checkpoint: str,
                run: dict[str, str] | None = None) -> str:
    """What a finished run did, for a terminal: per-epoch accuracy, judge accuracy and
    reward, the change from the start, and where the checkpoint and MLflow run are.
    `p(answer)` is the held-out true answer's mean probability (eval/answer_prob) and
    `p(verdict)` the right verdict's on the judge set (eval/judge_answer_prob); both move
    smoothly where greedy accuracy jumps.

    history[i] is the merged metrics of epoch i (0 = the starting model); `run` is
    `tracking.run_info` of the MLflow run, if there is one.
    """
    history = [h if isinstance(h, dict) else {} for h in (history or [])]
    n = max(0, len(history) - 1)
    lines = [f"SPARK run finished: arm {arm}, preset {preset}, seed {seed}, {n} epoch(s) "
             f"(epoch 0 = the starting model)", ""]
    cols = [(h, k) for h, k in SUMMARY_COLUMNS if any(_num(e.get(k)) is not None for e in history)]
    header = ["epoch"] + [h for h, _ in cols]
    rows = [[str(e)] + [fmt(h.get(k)) for _, k in cols] for e, h in enumerate(history)]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip())
    changes = [(label, _change(history, key)) for label, key in (("held-out accuracy", "eval/accuracy"),
                                                                 ("p(true answer)", "eval/answer_prob"),
                                                                 ("judge accuracy", "eval/judge_accuracy"),
                                                                 ("p(right verdict)", "eval/judge_answer_prob"),
                                                                 ("policy reward", "policy/reward_mean"))]
    changes = [(label, c) for label, c in changes if c]
    if changes:
        lines.append("")
        lines += [f"{label + ':':<19}{c}" for label, c in changes]
    lines += _by_source(history)
    lines += ["", f"checkpoint:        {checkpoint}  (Hugging Face format; transformers loads it directly)"]
    if run:
        uri = run.get("tracking_uri", "")
        lines.append(f"MLflow run:        {run.get('run_name', '')} (id {run.get('run_id', '')}), "
                     f"experiment {run.get('experiment', '')!r}")
        lines.append(f"MLflow tracking:   {uri}")
        lines.append(f"see it with:       mlflow ui --backend-store-uri {uri}")
        if run.get("rerun_of"):
            lines.append(f"note:              every stage came from the cache; this run repeats MLflow run "
                         f"{run['rerun_of']} (tagged spark.rerun_of, left out by spark-compare)")
    return "\n".join(lines)
