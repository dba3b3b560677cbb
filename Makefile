# lit-hc: `make reproduce` runs the paper's comparisons, `make test` checks the code. Both install first.
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else the one `make install` puts into this Python (python -m uv).
UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
# Trust the platform's certificate store (a package index behind a corporate or custom CA), whatever the uv
# version: newer uv reads UV_SYSTEM_CERTS, older UV_NATIVE_TLS; unknown variables are ignored.
export UV_SYSTEM_CERTS ?= 1
export UV_NATIVE_TLS ?= 1
PY := $(VENV)/bin/python
# hf: the Hugging Face injection (lit_hc.hf) and its tests; bench: the peer HC package `make bench` measures;
# data: pyarrow, datasets and zstandard for `lit-hc prepare` (parquet, save_to_disk folders, .jsonl.zst)
EXTRAS ?= --extra dev --extra hf --extra bench --extra data

.PHONY: help install test test-slow test-gpu test-all reproduce bench bench-widths bench-fit bench-profile tensorboard clean-venv

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## Create .venv from the committed uv.lock (idempotent; bootstraps uv with pip if missing)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --break-system-packages uv
	@$(UV) sync --locked --quiet $(EXTRAS)
	@$(PY) -c "import torch, torchvision, lightning, timm; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, lightning {lightning.__version__}, timm {timm.__version__}')"

test: install ## Run the test suite without the slow end-to-end checks (CPU; CI runs those too: make test-slow)
	$(PY) -m pytest -q -m "not slow"

test-slow: install ## Run only the slow end-to-end checks (every grid through the runner, chaos, compile, DDP)
	$(PY) -m pytest -q -m slow

test-gpu: install ## Run the GPU checks on a CUDA device (skipped without one; LIT_HC_TEST_DEVICE=cpu dry-runs them on the CPU)
	$(PY) -m pytest -q -m gpu -rs

test-all: install ## Run every test
	$(PY) -m pytest -q

TASK ?= all
SCALE ?= cpu
STUDY ?= main
reproduce: install ## Run a study into results/ [STUDY=main|depth|depth-grid-lr|controls] [TASK=lm|vit] [SEEDS=N] [QUICK=1] [SCALE=mid|paper DATA=path] [REGENERATE=1]
	$(PY) -m experiments.reproduce --study $(STUDY) --task $(TASK) --scale $(SCALE) $(if $(QUICK),--quick) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATA),--data $(DATA)) $(if $(RESULTS),--results $(RESULTS)) \
		$(if $(REGENERATE),--regenerate)

BENCH_ARGS ?=
bench: install ## Step time, memory and inference speed of every variant vs the baseline -> results/bench.{md,csv} (25 min here)
	$(PY) -m experiments.bench $(BENCH_ARGS)

bench-widths: install ## HC's step-time overhead at d = 64 (16 layers) to 1024, eager and compiled, against its memory-traffic floor -> results/bench_widths.{md,csv} (23-35 min here with BENCH_ARGS=--repeats 5, by the day's machine speed)
	$(PY) -m experiments.bench --sweep $(BENCH_ARGS)

bench-fit: install ## HC's cost in the training loop itself: `lit-hc fit` runs of the LM main grid, plain and fused -> results/bench_fit.{md,csv}
	$(PY) -m experiments.bench --fit $(BENCH_ARGS)

bench-profile: install ## Where an HC step's time goes at the experiments' 16 layers x d = 64, operator by operator against the baseline's -> results/bench-profile-d64/ (1 min)
	$(PY) -m experiments.bench --profile --widths d64-L16 --variants dhc4 dhc4-fused mhc4-fused --out results/bench-profile-d64 $(BENCH_ARGS)

LOGDIR ?= results
tensorboard: install ## Serve TensorBoard for results/ (all runs side by side) [LOGDIR=runs]
	$(PY) -m tensorboard.main --logdir $(LOGDIR) --bind_all

clean-venv: ## Remove .venv (results/ and checkpoints are never touched)
	rm -rf $(VENV)
