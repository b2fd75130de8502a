# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train test test-fast lint bench clean

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

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/attention.py --quick

clean:
	rm -rf $(VENV) outputs .pytest_cache
