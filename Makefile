# One entry point for everything. On a fresh machine `make test` or `make run` bootstraps .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export RAY_AUTH_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.PHONY: install run run-full test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	# torch first and pinned: the CPU build of 2.13.0 lies on this machine's disk; anything looser
	# makes pip pull a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on the embedded default (synthetic market, the quick profile): data, train, score,
## serve on 127.0.0.1:8000, backtest; serves until Ctrl-C
run: install
	$(PY) -m jobs.pipeline --config cluster/quick.yaml

## the full run: 500 tickers x 1,000 training days, 30 trials per tree model, served, then a two-fold
## walk-forward at the same scale while it serves
run-full: install
	$(PY) -m jobs.pipeline --config cluster/train.yaml

## the whole test suite (starts its own PostgreSQL and Ray; needs nothing running)
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
