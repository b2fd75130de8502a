# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-fast lint bench bench-peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Train the main job (LogSparse on the shipped electricity sample); extra overrides via ARGS=...
train: install
	$(PY) -m tsformer.train task=electricity model=logsparse $(ARGS)

## Full test suite (slow tests included)
test: install
	$(PY) -m pytest tests $(ARGS)

## Tests without the slow ones
test-fast: install
	$(PY) -m pytest tests -m "not slow" $(ARGS)

lint: install
	$(PY) -m ruff check tsformer tests benchmarks

## Attention benchmark (CPU, --quick); the peers benchmark needs its own venv: make bench-peers
bench: install
	$(PY) benchmarks/attention.py --quick

## GluonTS needs pandas < 3, so the peers live in .venv-bench
bench-peers:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -e ".[bench]"
	.venv-bench/bin/python benchmarks/forecasting.py --dataset electricity_sample --budget-minutes 5

clean:
	rm -rf $(VENV) outputs .pytest_cache
