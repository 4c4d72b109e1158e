# Entry points on a fresh machine: `make run` (a first look, minutes), `make learn` (a
# documented learning run, about half an hour) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export FLYTE_LOCAL_CACHE_ENABLED ?= true
export TOKENIZERS_PARALLELISM := false

$(BIN)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "needs $(PY) on PATH (or: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so nothing else pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: install run learn test test-fast test-research clean
install: $(BIN)/.installed

run: install
	$(BIN)/pyflyte run workflows/spark.py spark $(ARGS)

learn: install
	$(BIN)/pyflyte run workflows/spark.py spark --preset tiny-cpu-learn $(ARGS)

test: install
	FLYTE_LOCAL_CACHE_ENABLED=false $(BIN)/python -m pytest -q

test-fast: install
	FLYTE_LOCAL_CACHE_ENABLED=false $(BIN)/python -m pytest -q -m "not slow"

# the one-off studies under benchmarks/research (not part of `make test`)
test-research: install
	FLYTE_LOCAL_CACHE_ENABLED=false $(BIN)/python -m pytest -q benchmarks/research/tests

clean:
	rm -rf $(VENV) mlflow.db
