"""The GPU smoke (benchmarks/gpu_smoke.py) at toy size on CPU: the same command a GPU runs,
through the real trainer (DeepSpeed ZeRO-3), HF rollouts, reward, recycling and a resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_smoke_runs_at_toy_size(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")  # toy size even where a GPU is present
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_smoke.py"), "--toy",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("rollout tokens/s", "update tokens/s", "update MFU", "peak GPU memory",
                "rollout-vs-trainer log-prob gap", "KL at first step", "clip fraction at first step",
                "every loss finite"):
        assert f"| {row}" in proc.stdout
    res = json.loads(out.read_text())
    assert res["zero_stage"] == 3 and res["world_size"] == 1
    assert res["flytekit_imported"] is False
    assert res["rollout"]["response_tokens"] > 0 and res["rollout"]["tokens_per_s"] > 0
    assert res["update"]["steps"] == 2 and res["update"]["tokens_per_s"] > 0
    # behaviour log-probs come from the same weights: no gap, ratio 1 at the first step
    assert res["logprob_gap"]["tokens"] > 0 and res["logprob_gap"]["max"] < 1e-4
    assert abs(res["update"]["first_step_kl"]) < 1e-6 and res["update"]["first_step_clip_frac"] == 0
    # the planted worked solutions give the groups a reward spread, so the update moves the weights
    assert 0 < res["reward_mean"] < 1
    assert all(math.isfinite(g) and g > 0 for g in res["update"]["grad_norms"])
    assert res["resume"]["crashed_after_step"] == 1 and res["resume"]["resumed_steps"] == 1
    assert res["resume"]["global_step"] == res["update"]["steps"] + res["resume"]["steps"]
    assert res["all_losses_finite"] is True and all(math.isfinite(x) for x in res["losses"])
    assert sum(res["recycled"].values()) > 0
