"""How a GRPO pass's metrics are named in an epoch's log, whatever ran the pass."""

from __future__ import annotations


def pass_metrics(phase: str, m: dict) -> tuple[dict[str, float], list[dict]]:
    """`{phase}/...` numbers and `time/update_{phase}` from a pass's result, and its
    per-step log (TRAIN_STEPS rows)."""
    steps = list(m.get("step_log", []))
    out = {f"{phase}/{k}": v for k, v in m.items() if isinstance(v, (int, float))}
    out[f"time/update_{phase}"] = m.get("seconds", 0.0)
    return out, steps
