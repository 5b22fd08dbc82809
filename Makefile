# The two commands of the README: `make run` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.reidloop-installed
CONFIG ?= tune_configs/synthetic.yaml
ARGS   ?=

.PHONY: venv run test bench clean-runs

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

clean-runs:
	rm -rf runs
