# One command each: `make demo` (set up, optimize, serve, load-test, compare) and `make test` (set up, test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.optiserve-installed
# ONNX Runtime's GPU build where an NVIDIA GPU is visible, its CPU build elsewhere (never both).
RUNTIME := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install-torch.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	scripts/install-torch.sh $(BIN)/pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(RUNTIME),test]'
	touch $@

demo: setup
	$(BIN)/optiserve demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/pip install --quiet -c constraints.txt ruff mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy   # files and strictness: [tool.mypy] in pyproject.toml

clean:
	rm -rf runs .pytest_cache
