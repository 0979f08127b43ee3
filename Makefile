# Two commands do all the set-up on a fresh machine:
#   make quickstart   create .venv if missing, install, run the embedded REBEL demo end to end
#   make test         create .venv if missing, install, run the test suite (slow tests excluded)
# Torch: the CUDA build from PyPI when `nvidia-smi` finds a GPU, otherwise the CPU build
# (override with `make TORCH_INDEX=... TORCH_VERSION=...`).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed
# one thread is far faster for the tiny models of the demo and the tests on a small CPU
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

.PHONY: venv quickstart test test-slow clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the CUDA build of torch"; \
		$(BIN)/python -m pip install --quiet "torch>=2.4"; \
	else \
		echo "no GPU found: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(BIN)/python -m pip install --quiet --retries 1 --no-deps --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test]" "torch==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("torch"))')"
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rlhf-lightning run recipes/quickstart.yaml
	@echo "summary: runs/quickstart/summary.json"
	@cat runs/quickstart/summary.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean-runs:
	rm -rf runs/quickstart
