# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-all lint bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the local CPU wheel; nothing below may pull another torch.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adaptforge demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Also the slow end-to-end checks (the demo pipeline on little data; minutes on 2 cores).
test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/lora_quality.py
