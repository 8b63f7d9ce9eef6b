# The README's two commands: `make book` and `make test`. Both create the
# environment in .venv/ when it is missing (or older than the dependency list).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Deterministic runs. (MPLBACKEND is deliberately not set: in a notebook kernel it would replace the
# inline backend and figures would not be stored; scripts fall back to Agg on a headless machine.)
export PYTHONHASHSEED := 0

.PHONY: all env lock book pdf test lint unit nbval notebooks benchmarks gpu-check clean distclean

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

## make gpu-check: on a machine with a CUDA GPU, in under 8 minutes: the CUDA tests, the engine benchmark on
## the GPU (with its floor) and one full-profile stack of the data-poor study rerun end to end, each one's raw
## output under benchmarks/runs/<date>_<commit>_gpu-check/. GPU_PYTHON=python3 uses that interpreter's
## packages (a GPU machine without the package registry); Fashion-MNIST comes from the usual places
## (kdlib.lab.data) or from data/fashion-mnist (copy /usr/share/datasets/fashion-mnist there to carry it).
## GPU_DEVICE=cpu GPU_BENCH="--floor --quick" dry-runs the recipe here (its timings are not the check's).
GPU_PYTHON ?= $(BIN)/python
GPU_DEVICE ?= cuda
GPU_BENCH ?= --floor
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
gpu-check: SHELL := /bin/bash
gpu-check:
	@$(GPU_PYTHON) -c "import sys, torch; sys.exit(0 if '$(GPU_DEVICE)' == 'cpu' or torch.cuda.is_available() \
	  else 'gpu-check: no CUDA GPU here')"
	@set -o pipefail; out=benchmarks/runs/$$(date -u +%Y-%m-%d)_$(COMMIT)_gpu-check; mkdir -p $$out; \
	if [ -d data/fashion-mnist ]; then export KDLIB_DATA_DIR=$$PWD/data; fi; \
	{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true; } > $$out/device.txt; \
	KDLIB_TEST_GPU=$(GPU_DEVICE) timeout 150 $(GPU_PYTHON) -m pytest -p no:cacheprovider -o addopts= -q -m cuda \
	  tests/test_cuda.py 2>&1 | tee $$out/cuda_tests.txt; a=$$?; \
	PYTHONUNBUFFERED=1 timeout 210 $(GPU_PYTHON) benchmarks/engine_efficiency.py --device $(GPU_DEVICE) $(GPU_BENCH) 2>&1 \
	  | tee $$out/engine_efficiency.txt; b=$$?; \
	timeout 90 $(GPU_PYTHON) benchmarks/stack_time.py --device $(GPU_DEVICE) 2>&1 | tee $$out/stack_time.txt; c=$$?; \
	echo "gpu-check: tests $$a, benchmark $$b, stack $$c (0 = passed); output in $$out"; [ $$a$$b$$c = 000 ]

clean:
	rm -rf _build .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV)
