"""Shared fixtures: a real tiny Qwen2.5-VL directory built once per session, and
environment isolation (no Flyte local cache, MLflow in a temp SQLite file)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("FLYTE_LOCAL_CACHE_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Local Flyte runs keep their outputs where the tasks wrote them (flytekit's sandboxes and
# each update's optimizer state under the temp dir), so a test session would leave
# several GB in /tmp. Everything goes under one directory, removed when the session ends.
if "SPARK_TEST_TMP" not in os.environ:
    _tmp = tempfile.mkdtemp(prefix="spark-tests-")
    os.environ["SPARK_TEST_TMP"] = os.environ["TMPDIR"] = tempfile.tempdir = _tmp
    atexit.register(shutil.rmtree, _tmp, True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from spark_core.config import ModelConfig
    from spark_core.model.tiny import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny") / "model"), ModelConfig())


@pytest.fixture()
def mlflow_db(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
