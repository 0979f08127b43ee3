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

.PHONY: venv quickstart test test-slow test-gpu pipeline table1 table1-equal-samples vs-trl vs-trl-sizes memory clean-runs

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
	$(BIN)/rlhf-lightning run recipes/quickstart.yaml --overwrite true
	@echo "summary: runs/quickstart/summary.json"
	@cat runs/quickstart/summary.json

# SFT → reward model (noisy preference pairs) → REBEL against the learned reward model, each stage
# loading the previous stage's Hugging Face directory; outputs in runs/pipeline/{sft,reward_model,rebel}
pipeline: $(STAMP)
	$(BIN)/rlhf-lightning run recipes/pipeline/sft.yaml --overwrite true
	$(BIN)/rlhf-lightning run recipes/pipeline/reward_model.yaml --overwrite true
	$(BIN)/rlhf-lightning run recipes/pipeline/rebel.yaml --overwrite true
	@for stage in sft reward_model rebel; do echo "== $$stage"; cat runs/pipeline/$$stage/summary.json; echo; done

# the REBEL paper's Table 1 with its protocol on the headline task (9 methods × 3 seeds, 2 runs at a time),
# then its η ablation and reward–KL frontier (reusing Table 1's runs) → benchmarks/results/
table1: $(STAMP)
	$(BIN)/python benchmarks/table1.py --parallel 2
	$(BIN)/python benchmarks/eta_ablation.py --parallel 2
	$(BIN)/python benchmarks/frontier.py

# the equal-sample view of Table 1 on the quick summarisation task → benchmarks/results/table1_equal_samples.*
table1-equal-samples: $(STAMP)
	$(BIN)/python benchmarks/table1_equal_samples.py

# speed against TRL (optional dependency: pip install trl) → benchmarks/results/vs_trl.{md,json}
vs-trl: $(STAMP)
	$(BIN)/python -m pip install --quiet trl
	$(BIN)/python benchmarks/vs_trl.py
	$(BIN)/python benchmarks/dpo_vs_trl.py

# the same at realistic sizes (random Llamas of ~3M and ~27M parameters, 141- to 32000-token vocabularies,
# 1 and 2 threads; ~1 h on 2 cores) → benchmarks/results/vs_trl_*.{md,json} and vs_trl_sizes.md
VS_TRL = $(BIN)/python benchmarks/vs_trl.py --only ours_rebel ours_rloo_k2 trl_rloo_k2 trl_grpo --lr 1e-6
vs-trl-sizes: $(STAMP)
	$(BIN)/python -m pip install --quiet trl
	$(VS_TRL) --model 3m --vocab 141 --steps 6 --repeats 3
	for threads in 1 2; do for vocab in 141 8192; do \
	  $(VS_TRL) --model 27m --vocab $$vocab --threads $$threads --steps 3 --repeats 2 || exit 1; done; done
	$(VS_TRL) --model 27m --vocab 32000 --threads 2 --steps 3 --repeats 2
	$(BIN)/python benchmarks/vs_trl.py --summary

# two worker processes (pytest-xdist), one test file each at a time: module fixtures are built once
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# checks that need a CUDA GPU (QLoRA, bf16 FSDP2 and DeepSpeed on one GPU, generation throughput); each
# figure is printed and written to runs/gpu_results.json
test-gpu: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,qlora]"
	mkdir -p runs
	RLHF_GPU_RESULTS=runs/gpu_results.json $(BIN)/python -m pytest -q -s -m gpu tests/gpu

# the per-GPU memory model (DDP / FSDP2 / ZeRO-2 / ZeRO-3) and its check against 2-process CPU runs
memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py --measure

clean-runs:
	rm -rf runs/quickstart
