# The two commands of the README:
#   make demo   set up .venv and run the demo flywheel on embedded defaults
#   make test   set up .venv (with test extras) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FLYWHEEL_HOME ?= $(CURDIR)/.flywheel

.PHONY: demo test ui mlflow bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The tests also train a tiny model with the [local] extra and judge with deepeval ([judge]).
# torch is pinned to the CPU build these machines carry on disk (2.13.0), so no multi-GB CUDA
# build is downloaded.
$(VENV)/.installed-local: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet 'torch==2.13.0' -e '.[dev,local,judge]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/flywheel demo

test: $(VENV)/.installed-local
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/flywheel ui

mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(FLYWHEEL_HOME)/mlflow.db --host 127.0.0.1 --port 5000

bench: setup
	$(BIN)/python benchmarks/bench_labelling.py

clean:
	rm -rf $(VENV) .flywheel
