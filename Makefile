# Thin wrappers the README names. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch, installed first: a bare `torch` requirement may pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo lint test test-fast bench ui clean

setup: $(VENV)/.installed

# PYTHONWARNINGS: setuptools' build-time notes (editable-install advice) are not the user's business.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install -q -e ".[dev,plots]"
	touch $@

# Fashion-MNIST from Debian (best effort: needs root and apt; tests that need it skip without it).
data:
	@test -d $(FASHION) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"; }

demo: setup
	$(BIN)/kdexp-train

# The rule set is in pyproject.toml ([tool.ruff]); CI runs it as part of `make test`.
lint: setup
	$(BIN)/ruff check .

test: setup data lint
	$(BIN)/python -m pytest -q --durations=30  # the slowest 30: where CI time goes

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

ui: setup
	$(BIN)/kdexp-ui

clean:
	rm -rf outputs multirun .pytest_cache
