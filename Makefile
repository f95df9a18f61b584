# Developer entry points for formation-node. `make help` lists them.
# Quick start on a fresh machine: `make run` or `make test`; each creates .venv and
# installs what is missing (system packages via scripts/ensure-system-deps.sh).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Setup steps share apt, pip and npm state; running them concurrently only breaks them.
.NOTPARALLEL:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
# pip >= 25.1 understands `--group` (PEP 735 dependency groups).
PIP_MIN := 25.1
JS_DIR := tests/interop/js
JS_LOCK := $(JS_DIR)/package-lock.json
# npm ci writes this hidden lock file last, so it dates the install.
JS_STAMP := $(JS_DIR)/node_modules/.package-lock.json

# Extra arguments: `make test PYTEST_ARGS='-k gossip -x'`, `make run ARGS='--help'`.
PYTEST_ARGS ?=
ARGS ?=

# Tests read HYPOTHESIS_PROFILE (see tests/conftest.py): CI gets more, reproducible examples.
HYPOTHESIS_PROFILE ?= $(if $(filter-out false 0,$(CI)),ci,dev)
export HYPOTHESIS_PROFILE
export PYTHON
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help run test lint fmt bench clean distclean deps deps-run venv $(VENV) js-deps

help: ## Show this list of targets
	@echo "formation-node: make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_. -]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: ARGS (run), PYTEST_ARGS (test), PYTHON (interpreter for .venv, default python3)"

run: deps-run venv ## Start a node on embedded defaults (local profile, dials nobody); ARGS=... passes through
	$(VENV)/bin/formation-node run $(ARGS)

test: deps venv js-deps ## Run the whole test suite; PYTEST_ARGS=... passes through
	@echo "pytest with HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE)"
	@rc=0; $(VENV)/bin/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "error: pytest collected no tests (exit 5); a suite that runs nothing must not pass." >&2; \
	fi; \
	exit $$rc

lint: venv ## ruff check and mypy --strict (config in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: venv ## Format the code and fix what ruff can fix (import order, ...)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv ## Run every benchmarks/bench_*.py (each prints numbers, writes benchmarks/results/*.json)
	@shopt -s nullglob; benches=(benchmarks/bench_*.py); \
	if [ $${#benches[@]} -eq 0 ]; then echo "no benchmarks/bench_*.py yet"; exit 0; fi; \
	failed=(); \
	for b in "$${benches[@]}"; do \
		echo "== $$b"; \
		$(VENV)/bin/python "$$b" || failed+=("$$b"); \
	done; \
	if [ $${#failed[@]} -ne 0 ]; then echo "error: failed: $${failed[*]}" >&2; exit 1; fi

clean: ## Remove caches and build output (keeps .venv and node_modules)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -path ./$(JS_DIR)/node_modules -prune \
		-o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean ## Also remove .venv and tests/interop/js/node_modules
	rm -rf $(VENV) $(JS_DIR)/node_modules

deps: ## Check system packages; install missing ones when root (else print the command)
	@scripts/ensure-system-deps.sh

deps-run:
	@scripts/ensure-system-deps.sh run

venv: $(VENV_STAMP) ## Create .venv if missing; (re)install the project + dev group when pyproject.toml changed
$(VENV): venv

# Reinstalls only when pyproject.toml changes. A .venv without pip (python3 -m venv
# failed half way, e.g. without python3-venv) is rebuilt from scratch.
$(VENV_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "error: formation-node needs Python >= 3.11, and '$(PYTHON)' is not (or is missing)." >&2; \
		echo "  Install python3.11, or point at one: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11" >&2; \
		exit 1; }
	@scripts/ensure-system-deps.sh venv
	@if [ ! -x $(VENV)/bin/pip ]; then \
		rm -rf $(VENV); \
		echo "creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(VENV)/bin/python -m pip install -q 'pip>=$(PIP_MIN)'
	$(VENV)/bin/pip install -q -e . --group dev
	@touch $@

js-deps: $(if $(wildcard $(JS_LOCK)),$(JS_STAMP)) ## npm ci the interop test peers when their lock file changed

$(JS_STAMP): $(JS_LOCK)
	@command -v npm >/dev/null 2>&1 || { \
		echo "error: npm is missing, and the interop tests need it. Run: make deps" >&2; \
		echo "  (or: sudo apt-get install -y --no-install-recommends nodejs npm)" >&2; \
		exit 1; }
	npm ci --prefix $(JS_DIR) --no-audit --no-fund
	@touch $@  # also when npm had nothing to install and wrote no hidden lock file
