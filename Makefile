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

lra-all: setup
	$(PY) -m lra.train -m +experiment=lra_all
	$(PY) -m lra.results results/runs/lra/lra_all results/lra_all --title "LRA, small protocol"

# `make bench` (the default study, into the tracked results/bench), `make bench bench=quick` or
# `make bench bench=paper` (into results/bench/local/<profile>, ignored by git).
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
