# Developer entry points. `make test` is the command the README and CI (.ci/run) use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp

.PHONY: setup test demo tour docs bench

setup: $(STAMP)

# (Re)install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev,docs]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q -n 2 tests
	$(BIN)/python -m pytest -q -n 2 --nbmake --nbmake-timeout=120 tutorials

demo: setup
	$(BIN)/miras demo

tour: setup
	$(BIN)/python -m miras_ref.tour

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

bench: setup
	$(BIN)/python benchmarks/bench_ref_scan.py
