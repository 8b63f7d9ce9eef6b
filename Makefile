# The README's two commands: `make book` and `make test`. Both create the
# environment in .venv/ when it is missing (or older than the dependency list).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Deterministic runs. (MPLBACKEND is deliberately not set: in a notebook kernel it would replace the
# inline backend and figures would not be stored; scripts fall back to Agg on a headless machine.)
export PYTHONHASHSEED := 0

.PHONY: all env lock book pdf test lint unit nbval notebooks benchmarks clean distclean

all: test

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,cluster,test]"
	@touch $@

## make lock: re-resolve pyproject.toml's pins in a scratch venv and rewrite constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lock-venv/bin/python -m pip install --quiet -e ".[book,cluster,test]"
	{ head -n 3 constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^kdlib'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

## make book: the static book in _build/html (warnings are errors). --all rebuilds every page, so
## numbers glued from one notebook into another page (the conclusion) are never stale.
book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going

## make pdf: the whole book as one PDF, _build/latex/book.pdf (Jupyter Book's LaTeX builder and xelatex;
## the TeX packages are the Debian ones that .ci/run installs).
pdf: $(STAMP)
	$(BIN)/jupyter-book build . --builder pdflatex --all --warningiserror --keep-going
	@test -s _build/latex/book.pdf && echo "PDF: _build/latex/book.pdf"

## make test: ruff, the book build, then pytest (unit tests + nbval over every notebook).
test: $(STAMP)
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory book
	TQDM_DISABLE=1 KDLIB_REQUIRE_BOOK=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python -m pytest tests

nbval: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python -m pytest notebooks

## make notebooks: re-execute every notebook in place, refreshing its stored outputs.
notebooks: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/jupyter execute --inplace --timeout=1800 notebooks/*.ipynb

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/bench_losses.py
	$(BIN)/python benchmarks/engine_vs_naive.py --quick
	$(BIN)/python benchmarks/engine_efficiency.py

clean:
	rm -rf _build .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)
