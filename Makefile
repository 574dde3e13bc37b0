# Two entry points for a fresh clone: `make repro` and `make test`.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

# glibc otherwise hands large freed buffers back to the OS after every batch, and
# torch on the CPU then spends much of its time in page faults.
export GLIBC_TUNABLES := glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test test-fast lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

repro: $(STAMP)
	dvc repro
	dvc metrics show metrics/score_gated.json metrics/score_all.json

lint: $(STAMP)
	ruff check glr stages tests
	ruff format --check glr stages tests
	mypy glr stages

test: lint
	HF_HUB_OFFLINE=1 python -m pytest

test-fast: lint
	HF_HUB_OFFLINE=1 python -m pytest -m "not slow"
