# Two entry points: `make run` (the default experiment) and `make test` (lint + the whole suite).
# Both create or reuse the local virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench figures axioms clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mtkd_jax.main --config=experiments/configs/digits.py --workdir=runs/digits
	$(PY) experiments/plots/digits.py runs/digits

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n 2 --durations=15 tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/kd_loss.py

figures: $(STAMP)
	$(PY) experiments/figures.py

axioms: $(STAMP)
	$(PY) -m mtkd_jax.axioms

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
