# PlusUltra: `make demo` runs the default experiment, `make test` runs the fast tests.
# Both set up .venv first (Python 3.11 + pip only; torch pinned to the CPU wheel by constraints.txt).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-slow test-full bench results results-smoke docs lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package with dev tools

demo: $(STAMP)  ## run the default experiment on the built-in synthetic data
	$(BIN)/plusultra

test: $(STAMP)  ## fast test tier (what CI runs first)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## slow tier only: real CLI runs, multirun
	$(BIN)/python -m pytest -q -m slow

test-full: $(STAMP)  ## every tier except gpu
	$(BIN)/python -m pytest -q -m 'not gpu'

bench: $(STAMP)  ## run every benchmark in experiments/benchmarks (writes docs/benchmarks.md)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m experiments.benchmarks.sqlite_reader
	$(BIN)/python -m experiments.benchmarks.indicators
	$(BIN)/python -m experiments.benchmarks.alpha158
	$(BIN)/python -m experiments.benchmarks.data_pipeline
	$(BIN)/python -m experiments.benchmarks.models
	$(BIN)/python -m experiments.benchmarks.cross_asset
	$(BIN)/python -m experiments.benchmarks.simulator
	$(BIN)/python -m experiments.benchmarks.simulator_realistic
	$(BIN)/python -m experiments.benchmarks.sweeps
	$(BIN)/python -m experiments.benchmarks.resume
	$(BIN)/python -m experiments.benchmarks.diagnostics
	$(BIN)/python -m experiments.benchmarks.memory
	$(BIN)/python -m experiments.benchmarks.rl_env
	$(BIN)/python -m experiments.benchmarks.ppo
	$(BIN)/python -m experiments.benchmarks.service
	$(BIN)/python -m experiments.benchmarks.gpu  # skips (exit 0) without CUDA

results: $(STAMP)  ## issue 15's results recipe (2-2.5 h on 2 cores; resumes; writes docs/results.md)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,lightgbm]'
	$(BIN)/python -m experiments.results

results-smoke: $(STAMP)  ## the results recipe's smoke variant (minutes, into a temporary dir)
	$(BIN)/python -m experiments.results --smoke

docs: $(STAMP)  ## regenerate docs/features.md from the feature registry
	$(BIN)/plusultra-data features --markdown > docs/features.md

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

format: $(STAMP)  ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix src tests experiments
	$(BIN)/ruff format src tests experiments

clean:  ## remove outputs/ (runs, catalogue, caches); keeps .venv
	rm -rf outputs/runs outputs/multiruns outputs/catalogue outputs/cache
