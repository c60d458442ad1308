# kdlab: `make demo` and `make test` are all a newcomer needs (Python ≥ 3.10 and make).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlab-installed
PORT ?= 8888
CHROMIUM ?= /usr/bin/chromium
USER_ID ?= $(shell id -u)
SUDO := $(if $(filter 0,$(USER_ID)),,sudo)
# JupyterLab refuses to start as root without --allow-root; root is normal in containers.
LAB_FLAGS := $(if $(filter 0,$(USER_ID)),--allow-root)

.PHONY: demo test test-unit test-notebooks test-browser test-slurm lint lab bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# Execute every notebook headless (papermill) on the embedded dataset, then the digits grid.
demo: $(STAMP)
	$(PY) -m kdlab demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kdlab tests notebooks
	$(VENV)/bin/ruff format --check kdlab tests notebooks
	$(PY) -m kdlab.nbtools --check

# One worker per core, a test file per worker (its tests share module-level set-up). The notebooks
# stay serial: two kernels training at once on two cores are slower than one after the other.
test-unit: $(STAMP)
	KDLAB_PROFILE=smoke $(PY) -m pytest -m "not browser" -n auto --dist loadfile tests

test-notebooks: $(STAMP)
	KDLAB_PROFILE=smoke $(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks

# The whole suite: lint, unit tests, every notebook in the smoke profile under nbval.
test: lint test-unit test-notebooks

# Every notebook in JupyterLab in headless Chromium (Debian's chromium; no browser download).
test-browser: $(STAMP)
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	@$(PY) -c "import playwright.sync_api" 2>/dev/null || $(PY) -m pip install -q playwright
	KDLAB_PROFILE=smoke KDLAB_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -m browser -p no:cacheprovider -v -s tests/test_browser.py

# A single-node SLURM cluster (Debian's slurmctld, slurmd, munge) runs the smoke grid through
# `reproduce --executor slurm` to its results.md, and a requeued task resumes from its checkpoint
# (about 3 min here; needs root, kept out of `make test`).
test-slurm: $(STAMP)
	tests/slurm/run.sh $(PY)

# Plant each named bug of tests/mutations.py in a throwaway copy of kdlab: every one must be caught.
.PHONY: mutate
mutate: $(STAMP)
	$(PY) tests/mutations.py

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(LAB_FLAGS)

bench: $(STAMP)
	$(PY) -m kdlab bench

# The one-shot GPU check (kdlab/gpucheck.py) for a bare, offline GPU machine: no venv, no install,
# the checkout on the path; under 8 minutes on one GPU. OUT=folder for the report (default
# runs/gpu-check); DEVICE=cpu for its dry run on the CPU (a few minutes).
# It runs with the venv's Python where there is one (a developer's checkout), else python3.
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m kdlab.gpucheck --out $(or $(OUT),runs/gpu-check) $(if $(DEVICE),--device $(DEVICE))

clean:
	rm -rf runs .pytest_cache
