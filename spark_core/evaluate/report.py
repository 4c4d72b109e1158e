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
    ("Judge accuracy (eval)", ("eval/judge_accuracy",), ("eval/judge_accuracy/",)),
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


def _plot(title: str, keys: list[str], history: list[dict]) -> str:
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
    if len(history) < 12:
        ax.set_xticks(range(len(history)))
    return _png(fig)


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
