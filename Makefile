# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-all lint bench browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the local CPU wheel; nothing below may pull another torch.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,ray]'  # ray: the sweep/eval Ray backend's tests run in CI
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adaptforge demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Also the slow end-to-end checks (the demo pipeline on little data; minutes on 2 cores; the report page in
# headless Chromium).
test-all: $(STAMP) browser
	$(PY) -m pytest -q

# Headless Chromium for the slow report test: Debian's package, installed only when missing (root and apt, as on
# the project's machines and CI; elsewhere install it with your system's package manager).
browser:
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/lora_quality.py
