# `make run` and `make test` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/aggregator.yaml

.PHONY: setup run demo test lint check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup  ## worker + web server on config/aggregator.yaml (CONFIG=... to change)
	$(PY) run.py run --config $(CONFIG)

demo: setup  ## the offline demo: local feed files, populated topic feeds
	$(PY) run.py run --config config/demo.yaml

lint: setup
	$(VENV)/bin/ruff check aggregator tests run.py
	$(VENV)/bin/ruff format --check aggregator tests run.py
	$(VENV)/bin/mypy

test: lint  ## lint, type-check, then the whole test suite
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
