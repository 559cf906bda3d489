# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
# On a machine with CUDA, install your CUDA build of torch into .venv first (see README);
# otherwise the CPU build torch==2.13.0 is installed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_OUT ?= modtrans_demo

.PHONY: setup demo test lint docs clean

$(BIN)/modtrans: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/modtrans

demo: setup
	$(BIN)/modtrans demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) site
