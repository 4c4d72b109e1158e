"""Scripts run from the project root as `python -m benchmarks.NAME` (see each docstring)."""
