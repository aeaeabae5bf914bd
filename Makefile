# Every target installs what it needs into .venv first, so a fresh clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck unit bench bench-flower clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[dev,torch,demo]'
	touch $(STAMP)

## make test: lint, type-check and run the whole test suite (what CI runs)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

## make demo: federated training of a digits classifier through a broker, secure vs plaintext
demo: $(STAMP)
	$(BIN)/mpc-agg demo

## make bench: rerun the benchmarks and rewrite benchmarks/results/
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# Benchmark-only venv for Flower (flwr never goes into .venv). Pinned exactly: flwr and what
# its SecAgg+ spends CPU in; none of them pulls torch (checked with `pip install --dry-run`).
FLWR_VENV   := .venv-flwr
FLWR_STAMP  := $(FLWR_VENV)/.installed
FLWR_PINS   := 'flwr==1.42.0' 'numpy==2.4.6' 'cryptography==50.0.2' 'pycryptodome==3.24.1' \
               'protobuf==6.33.6'
FLOWER_ARGS ?= --n 10 --d 1000000 --repeat 3

$(FLWR_STAMP): Makefile
	$(PYTHON) -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLWR_VENV)/bin/python -m pip install --quiet $(FLWR_PINS)
	touch $(FLWR_STAMP)

## make bench-flower: total CPU per round, our in-process secagg round against Flower SecAgg+
## (complete graph); other sizes: make bench-flower FLOWER_ARGS="--n 5 10 --d 100000 --repeat 3"
bench-flower: $(STAMP) $(FLWR_STAMP)
	$(BIN)/python -m benchmarks.flower_compare $(FLOWER_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
