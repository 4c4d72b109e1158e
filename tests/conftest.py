"""Shared fixtures: a real tiny Qwen2.5-VL directory built once per session, and
environment isolation (no Flyte local cache, MLflow in a temp SQLite file)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLYTE_LOCAL_CACHE_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
