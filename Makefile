# Two commands on a fresh machine:
#   make train    set up .venv, then train the default run (digits, MLP, cross-entropy)
#   make test     set up .venv, then run the fast test suite
# Extra arguments for train go in ARGS:  make train ARGS="loss=focal loss.gamma=3"
# An environment that already has (CUDA) torch:  make install VENV_FLAGS=--system-site-packages

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
ARGS ?=
# how torch is installed when none is importable. On this project's machines the CPU wheel lies on
# disk; elsewhere ask for the CPU build explicitly, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: install train test test-slow test-promises coverage mutation bench clean

install: $(VENV)/.installed

# torch first: the CPU wheel pinned (a bare "torch" would pull a multi-GB CUDA build), and only
# when no torch is importable, so an existing CUDA torch is never reinstalled.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,sweeps]"
	touch $@

train: install
	$(PY) scripts/train.py $(ARGS)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# the README's headline promises end to end (CI runs them after `make test`): exact resume after SIGTERM and SIGKILL,
# DDP on 2 CPU processes equal to one process, real sweeps with a failing job, a run that downloads its data
test-promises: install
	$(PY) -m pytest -q -m promise

# the fast suite under coverage, lines and branches, one row per module (htmlcov/index.html for the lines)
coverage: install
	$(PY) -m pytest -q --cov=ceexp --cov-branch --cov-report=term --cov-report=html

# mutation testing (mutmut) of the modules that compute what users publish, each against its own fast tests
# (tests/mutation.py lists them); not in CI: minutes per module. One module: make mutation MODULES=files
MODULES ?=
mutation: install
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet -e ".[mutation]"
	$(PY) tests/mutation.py $(MODULES)

# every benchmark runs even when one misses its target (a miss exits 1 and is printed as MISS); each prints its
# ratios beside their targets. About 15 minutes on 2 cores.
bench: install
	-$(PY) benchmarks/bench_sweep.py
	-$(PY) benchmarks/bench_default_run.py
	-$(PY) benchmarks/bench_mnist_run.py
	-$(PY) benchmarks/bench_losses.py
	-$(PY) benchmarks/bench_startup.py
	-$(PY) benchmarks/bench_launchers.py
	-$(PY) benchmarks/bench_cifar_epoch.py
	-$(PY) benchmarks/bench_bootstrap.py

clean:
	rm -rf outputs
