# Two entry points: `make run` (the default experiment) and `make test` (lint + the whole suite).
# Both create or reuse the local virtual environment .venv on first use, with the exact versions
# of constraints.txt (the low end of setup.py's jax range). `make test-newest` runs the kernel,
# operator and train-step tests on the newest versions in range, in .venv-newest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NEWEST := .venv-newest
NEWEST_TESTS := tests/test_fused_kd.py tests/test_operators.py tests/test_train.py \
  $(wildcard tests/test_fused_linear_kd.py)

.PHONY: run test test-newest lint format bench device-check figures notebooks axioms clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mtkd_jax.main --config=experiments/configs/digits.py --workdir=runs/digits
	$(PY) experiments/plots/digits.py runs/digits

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n 2 --durations=15 tests

# No constraints file and --upgrade on every call: whatever is newest in setup.py's range today.
test-newest:
	test -x $(NEWEST)/bin/python || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	$(NEWEST)/bin/python -c 'import jax, jaxlib, flax, optax; print("newest in range: jax", \
	  jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", \
	  optax.__version__)'
	$(NEWEST)/bin/python -m pytest -n 2 -q -m "not slow" $(NEWEST_TESTS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/kd_loss.py

# Kernels compiled, benchmarks and the two end-to-end jobs on the accelerator jax sees (on a
# machine without one: one line, exit 0). Options: make device-check ARGS="--cpu --ks=2".
device-check: $(STAMP)
	$(PY) benchmarks/device_check.py $(ARGS)

figures: $(STAMP)
	$(PY) experiments/figures.py

# Every notebook executed in place at full size (the outputs committed with them); its runs and
# PNGs go to notebooks/runs/ (ignored). NOTEBOOK_SIZE=small for a quick check.
notebooks: $(STAMP)
	cd notebooks && for nb in *.ipynb; do MTKD_NOTEBOOK_SIZE=$(or $(NOTEBOOK_SIZE),full) \
	  ../$(VENV)/bin/jupyter execute --inplace --timeout=-1 $$nb || exit 1; done

axioms: $(STAMP)
	$(PY) -m mtkd_jax.axioms

clean:
	rm -rf $(VENV) $(NEWEST) .pytest_cache .ruff_cache .hypothesis
