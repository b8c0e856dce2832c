# lra-zoo: two commands on a fresh machine: `make setup` then `make demo` (or `make test`).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Use both cores for the test suite; set PYTEST_WORKERS=0 to run serially.
PYTEST_WORKERS ?= auto

.PHONY: setup test lint demo data mini lra-all bench mutation clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "lra-zoo needs Python >= 3.10"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Install the pinned CPU wheel first so nothing below resolves torch to a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

mini: setup
	$(PY) -m data_prep mini

data: setup
	@echo "Prepare one task:  $(PY) -m data_prep <task> --source <source>  (each task's sources: below)"
	@echo "Offline mini suite: make mini"
	$(PY) -m data_prep --help

demo: setup
	$(PY) -m lra.demo

# The benchmark grid, then its table and plots in results/<tag>/ (lra/grid.py; README "Run the
# benchmark"). Each variable narrows or changes the default grid (conf/experiment/lra_all.yaml):
#   make lra-all DATA=mini TRAINER=smoke                       # every task x attention on CPU
#   make lra-all TASKS=listops,text ATTENTIONS=softmax,mra2 SEEDS=0,1,2
#   make lra-all PROTOCOL=lra_original LAUNCHER=slurm OVERRIDES="hydra.launcher.partition=gpu"
# TASKS, ATTENTIONS, SEEDS: comma-separated. DATA: lra | mini. PROTOCOL: small_protocol |
# lra_original | reproduce_mra. LAUNCHER: basic | joblib | slurm | submitit_slurm. TRAINER: a
# conf/trainer/ profile (smoke: 50 steps of 8 examples a run). OVERRIDES: lra.train overrides
# for every run.
TASKS ?=
ATTENTIONS ?=
SEEDS ?= 0
DATA ?= lra
PROTOCOL ?= small_protocol
LAUNCHER ?= basic
TRAINER ?= default
OVERRIDES ?=
lra-all: setup
	$(PY) -m lra.grid $(if $(TASKS),--tasks $(TASKS)) $(if $(ATTENTIONS),--attentions $(ATTENTIONS)) --seeds $(SEEDS) --data $(DATA) --protocol $(PROTOCOL) --launcher $(LAUNCHER) --trainer $(TRAINER) $(OVERRIDES)

# `make bench` (the default study), `make bench bench=quick` or `make bench bench=paper`: into
# results/bench/local/<profile>, ignored by git; the tracked results/bench/<name>/ came from --out.
bench ?= default
bench: setup
	$(PY) -m lra.bench --profile $(bench)

# Mutation run (results/mutation/README.md): the whole core by default, which takes hours on 2
# cores; one module with its tests, e.g.
#   make mutation MUTATE=data_prep/cache.py MUTATION_TESTS="tests/test_data_cache.py" \
#                 MUTATION_OUT=results/mutation/data_prep_cache.md
MUTATE ?=
MUTATION_TESTS ?=
MUTATION_OUT ?= results/mutation/report.md
mutation: setup
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) tools/mutation.py $(if $(MUTATE),--mutate $(MUTATE)) \
		$(if $(MUTATION_TESTS),--tests $(MUTATION_TESTS)) --out $(MUTATION_OUT)

clean:
	rm -rf outputs multirun results/demo .pytest_cache build/mutation
