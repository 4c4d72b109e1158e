"""The main suite's fixtures and environment isolation (tests/conftest.py), for the
research tests, which run apart: `python -m pytest benchmarks/research/tests`."""

from tests.conftest import mlflow_db, tiny_dir  # noqa: F401 - fixtures
