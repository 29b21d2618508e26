# make demo: set up .venv, then run the offline demo suite (CPU is fine; ~10 min on 2 cores)
# make test: set up .venv (and Debian's chromium for the report's browser test, where missing), then run the test suite
# make lint: ruff check, ruff format --check, the size limits and the import rules (run by .ci/run before the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed first: an open range would pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/peftbench run demo

test: install
	bash tools/ensure_chromium.sh
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# make lint: ruff (rules and format in pyproject.toml), the house limits (functions <= 60 lines, modules <= 600,
# a warning over 400) and the import rules (layers, no circle, torch-free parts: tools/check_imports.py)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_sizes.py
	$(BIN)/python tools/check_imports.py

clean:
	rm -rf $(VENV) runs
