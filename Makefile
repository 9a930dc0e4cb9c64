# Two entry points: `make demo` (the main job) and `make test` (the test suite); `make docs`
# builds the documentation site into site/ (warnings are errors); `make test-python
# PYTHON_VERSION=3.13.0` runs the fast suite on another declared Python.
# demo and test create .venv and install riftune into it first if needed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data/medmnist)
# Where the MedMNIST files are: $RIFTUNE_DATA if set, else ../shared/data/medmnist if present
# (otherwise riftune downloads them to ~/.medmnist when online).
ifeq ($(RIFTUNE_DATA),)
ifneq ($(wildcard $(SHARED_DATA)/breastmnist.npz),)
export RIFTUNE_DATA := $(SHARED_DATA)
endif
endif
# two workers on the two cores; a module's shared fixtures stay on one worker (xdist_group)
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: demo test test-fast test-python lint docs install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/riftune demo

# one intra-op thread per test worker: two workers share the two cores without contention
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The fast suite on another declared Python (pyenv's CPython, e.g. 3.12.1 or 3.13.0) in a venv of
# its own: `make test-python PYTHON_VERSION=3.13.0` (PYTHON_VENV to put that venv elsewhere).
# Its torch is PyPI's CUDA build (~5.5 GB in the venv); --no-cache-dir keeps pip from holding a
# second copy of the wheels.
PYTHON_VERSION ?= 3.13.0
PYTHON_VENV ?= .venv-py$(PYTHON_VERSION)

$(PYTHON_VENV)/.installed: pyproject.toml constraints.txt
	PYENV_VERSION=$(PYTHON_VERSION) python -m venv $(PYTHON_VENV)
	$(PYTHON_VENV)/bin/python -m pip install -q --no-cache-dir -c constraints.txt -e '.[test,docs]'
	touch $@

test-python: $(PYTHON_VENV)/.installed
	OMP_NUM_THREADS=1 $(PYTHON_VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check riftune tests benchmarks docs/hooks
	$(VENV)/bin/ruff format --check riftune tests benchmarks docs/hooks
	$(VENV)/bin/lint-imports --no-cache

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .venv-py* runs site .pytest_cache
