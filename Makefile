# Every target sets itself up: a .venv with pinned dependencies, then bnkit installed into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bnkit-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# Keep caches inside the project so runs leave the home folder alone.
export MPLCONFIGDIR := $(CURDIR)/.venv/.mpl
export KERAS_HOME   := $(CURDIR)/.venv/.keras
export KERAS_BACKEND := torch

.PHONY: all study demo docs test test-slow lint types pytest bench bench-study clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e ".[cli,study,ray,docs,dev]"
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/bnkit study --out study-results
	@echo "The study's report: study-results/report.html (and report.md, results.csv)"

demo: $(STAMP)
	$(BIN)/bnkit explain --demo
	$(BIN)/bnkit policies

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet
	@echo "docs built in site/index.html; for search, serve it: python -m http.server -d site"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

types: $(STAMP)
	$(BIN)/mypy

# `make test`: everything but the tests marked slow; `make test-slow`: those (Ray,
# study runs in subprocesses, several processes).
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test: lint types pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_forward.py

bench-study: $(STAMP)
	$(BIN)/python benchmarks/bench_study_scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
