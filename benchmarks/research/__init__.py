"""One-off studies of the tiny default, kept apart from what users run (`python -m benchmarks.research.NAME`).

Their tests (benchmarks/research/tests) are outside the default test run: `python -m pytest benchmarks/research/tests`.
"""
