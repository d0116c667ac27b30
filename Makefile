# Two commands on a fresh machine: `make run` (train the default config) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test study study-quick bench bench-full table1 lint clean help

help:
	@echo "make run    - create .venv, install, train configs/default.yaml on mnist5k, print a summary"
	@echo "make test   - create .venv, install, run the test suite"
	@echo "make study  - run the pre-registered collision study from scratch into docs/study/ (about 50 min on 2 cores)"
	@echo "make study-quick - the same pipeline at CI size into study-quick/ (a few minutes)"
	@echo "make bench  - run the speed benchmarks in their quick mode (a few minutes)"
	@echo "make bench-full - the long benchmarks (VGG-16, ViT-B/16, every registry model)"
	@echo "make table1 - audit the Table-1 architectures into docs/table1.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	# torchattacks (the reference our PGD is tested against) pins an old requests; its real needs
	# (torch, numpy, scipy, tqdm) are already installed, so skip its metadata.
	$(BIN)/pip install --quiet --no-deps 'torchattacks==3.5.1'
	# robustbench (rb: models) pins timm==1.0.9, older than the timm we test; its imports are listed in
	# pyproject.toml, so install the package alone.
	$(BIN)/pip install --quiet --no-deps 'robustbench==1.1.1'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python train/regularized.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

study: $(STAMP)
	$(BIN)/python eval/study/run.py --fresh --jobs 2 --budget-minutes 60

study-quick: $(STAMP)
	$(BIN)/python eval/study/run.py --quick --out study-quick --runs runs/study-quick

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

bench-full: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

table1: $(STAMP)
	$(BIN)/python eval/table1.py --out docs/table1.md

lint: $(STAMP)
	$(BIN)/ruff check regcollide train eval benchmarks tests

clean:
	rm -rf runs study-quick .pytest_cache
