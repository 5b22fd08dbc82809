# The two commands of the README: `make run` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.reidloop-installed
CONFIG ?= tune_configs/synthetic.yaml
ARGS   ?=

CUHK01 ?= ../shared/data/cuhk01
CUHK03 ?= ../shared/data/cuhk03

.PHONY: venv run test bench bench-cuhk01 clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The main job on the built-in synthetic data.
run: $(STAMP)
	$(PY) -m trainers.run_job --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# The CUHK03 -> CUHK01 table (benchmarks/cuhk01_table.py): trains the CUHK03 source model once into
# runs/cuhk03_source, then runs the rows whose results file is missing. ARGS="--rows ... --seeds ...".
bench-cuhk01: $(STAMP)
	$(PY) benchmarks/cuhk01_table.py --cuhk01 $(CUHK01) --cuhk03 $(CUHK03) $(ARGS)

clean-runs:
	rm -rf runs
