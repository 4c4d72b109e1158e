"""The top-level flyte.config is what `pyflyte run --remote workflows/spark.py spark`
uses from the project root with no flags: flytekit 1.16 reads ./flytekit.config (a
link to flyte.config), below $FLYTECTL_CONFIG and above ~/.flyte/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("from flytekit.configuration import Config; c = Config.auto(); "
         "print(c.platform.endpoint, c.platform.insecure, c.platform.console_endpoint)")


def _probe(cwd: Path, home: Path, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("FLYTECTL_CONFIG", "FLYTE_PLATFORM", "_FLYTECTL"))}
    e.update(HOME=str(home), **env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_flytekit_reads_flyte_config(tmp_path):
    link = ROOT / "flytekit.config"
    assert link.is_symlink() and os.readlink(link) == "flyte.config"
    assert _probe(ROOT, tmp_path) == "localhost:30080 True http://localhost:30080"
    # elsewhere, with an empty home, flytekit falls back to its built-in defaults (no console)
    assert _probe(tmp_path, tmp_path) != "localhost:30080 True http://localhost:30080"


def test_flytectl_config_overrides(tmp_path):
    assert _probe(ROOT, tmp_path, FLYTECTL_CONFIG=str(ROOT / "config" / "remote.yaml")).startswith(
        "flyte.example.com False")
