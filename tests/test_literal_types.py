"""The per-type literal types of tasks/literal_types.py equal flytekit's own."""

from __future__ import annotations

from flytekit.core.type_engine import TypeEngine

import tasks  # noqa: F401  (installs the cache)
from spark_core.config import ModelConfig, SparkConfig, TrainConfig
from tasks import literal_types


def test_each_dataclass_literal_type_is_flytekits_and_built_once(monkeypatch):
    real = literal_types._uncached
    built = []

    def counting(self, t):
        built.append(t)
        return real(self, t)

    monkeypatch.setattr(literal_types, "_CACHE", {})
    monkeypatch.setattr(literal_types, "_uncached", counting)
    transformer = TypeEngine.get_transformer(ModelConfig)
    for t in (ModelConfig, TrainConfig, SparkConfig, ModelConfig, SparkConfig):
        cached = TypeEngine.to_literal_type(t)
        assert cached == real(transformer, t)  # what flytekit itself builds
        assert cached.metadata and cached.simple is not None  # a struct with its JSON schema
    assert built.count(ModelConfig) == 1 and built.count(SparkConfig) == 1 and built.count(TrainConfig) == 1
