# Every target installs into .venv first if needed (torch from this machine's disk, then detlab itself).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.detlab-installed
ARGS   ?=
# Real-data test tier: ../shared/data when it is there, or whatever DETLAB_REAL_DATA names.
DETLAB_REAL_DATA ?= $(wildcard $(abspath ../shared/data))
export DETLAB_REAL_DATA
# One pytest-xdist worker per core, at most 4 (each holds its own torch); worksteal hands a worker that is done
# the tests still queued behind a long one. tests/conftest.py gives each worker its share of the cores.
# ARGS="-n 0" runs in one process.
PYTEST_WORKERS := -n auto --maxprocesses 4 --dist worksteal
PYTEST_MARKS := $(if $(DETLAB_REAL_DATA),not slow and not faults and not gpu,not slow and not faults and not gpu and not realdata)

.PHONY: install train test test-slow test-faults bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/detlab-train $(ARGS)

test: $(STAMP)
	@test -n "$(DETLAB_REAL_DATA)" || echo "note: DETLAB_REAL_DATA is not set and ../shared/data is absent: the real-data tier is left out"
	$(PY) -m pytest $(PYTEST_WORKERS) -m "$(PYTEST_MARKS)" $(ARGS)

# The wheel installed into a fresh venv, and gpu-check rehearsed on the CPU (tests/test_packaging.py,
# tests/cli/test_gpu_check.py): under a minute, CI runs it too.
test-slow: $(STAMP)
	$(PY) -m pytest $(PYTEST_WORKERS) -m slow $(ARGS)

# kill -9 and resume, a full disk, every user error as exit status 2 (tests/test_faults.py): 2 minutes with two
# workers, 5.5 in one process, up to 21 under load; a target of its own, so that `make test` keeps its margin
# under 15 minutes at the machine's slow hours, and CI runs it too.
test-faults: $(STAMP)
	$(PY) -m pytest $(PYTEST_WORKERS) -m faults $(ARGS)

bench: $(STAMP)
	$(PY) -m detlab.cli.bench $(ARGS)

# At most 8 minutes on one GPU: the gpu test tier, bench on CUDA, R50-FPN throughput, a 2-minute training.
# Without CUDA it says so and exits 0.
gpu-check: $(STAMP)
	$(PY) -m detlab.cli.gpu_check $(ARGS)

clean:
	rm -rf runs multirun wandb .pytest_cache
