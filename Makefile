# The two commands of the README: `make run` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.reidloop-installed
CONFIG ?= tune_configs/synthetic.yaml
ARGS   ?=

CUHK01 ?= ../shared/data/cuhk01
CUHK03 ?= ../shared/data/cuhk03

.PHONY: venv run serve sweep annotate test test-fast bench bench-cuhk01 clean-runs

venv: $(STAMP)

# Every package from the lock, each file checked against its sha256 (pip and setuptools too), then the
# project itself without dependencies, built by the locked setuptools (no build isolation: nothing unhashed).
LOCK   := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# Re-resolve requirements.lock from pyproject.toml (dependencies + the dev extra) plus pip and setuptools (the
# installer and the build backend) for Linux x86_64, CPython 3.11, with hashes; versions already locked are
# kept while pyproject.toml allows them, UPGRADE=1 moves every package to its newest allowed release.
# uv runs from its own venv under .cache/ (needs PyPI).
UV_VERSION ?= 0.13.9
UV_VENV    ?= .cache/uv-$(UV_VERSION)
.PHONY: lock
lock:
	@test -x $(UV_VENV)/bin/uv || { $(PYTHON) -m venv $(UV_VENV) && $(UV_VENV)/bin/pip install -q uv==$(UV_VERSION); }
	printf 'pip\nsetuptools\n' | $(UV_VENV)/bin/uv pip compile -q pyproject.toml - --extra dev --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
	    $(if $(UPGRADE),--upgrade) -o $(LOCK)

# The main job on the built-in synthetic data.
run: $(STAMP)
	$(PY) -m trainers.run_job --config $(CONFIG) $(ARGS)

# Serve the model `make run` trained (Ray Serve on http://127.0.0.1:8000, Ctrl-C stops); once it serves it
# prints a `curl` that posts one of the run's images to /embed. CHECKPOINT=<model.pt or run folder>.
SERVE_CONFIG ?= tune_configs/serve.yaml
CHECKPOINT   ?= runs/synthetic/model.pt
serve: $(STAMP)
	$(PY) -m trainers.serve --config $(SERVE_CONFIG) --set checkpoint=$(CHECKPOINT) $(ARGS)

# The small CPU sweep of the README's Sweeps section (Ray Tune); outputs in runs/sweeps/<name>/.
SWEEP ?= tune_configs/sweep_synthetic.yaml
sweep: $(STAMP)
	$(PY) -m trainers.sweep --config $(SWEEP) $(ARGS)

# A run whose questions people answer in a browser (oracle.mode: human): the annotator page is printed once
# the pre-trained model is evaluated (http://127.0.0.1:8300). 40 answers, a round (fine-tune, metrics) every 10.
ANNOTATE_OUT ?= runs/annotate
annotate: $(STAMP)
	$(PY) -m trainers.run_job --config $(CONFIG) --local --set oracle.mode=human --set rounds=answers \
	    --set oracle.budget=40 --set finetune.every=0.25 --set output_dir=$(ANNOTATE_OUT) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# The tests not marked slow (@pytest.mark.slow: a whole loop run, Ray Serve or Ray Train, more than a few
# seconds each), for quick checks while editing; `make test` (CI) runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

# The CPU-sized benchmarks that need no dataset, with the commands of benchmarks/README.md: env_workers_bench.py
# (the Ray loop's questions/s with 1, 2, 4 env workers), precision_bench.py (fp32 vs bf16 throughput) and
# serve_bench.py (HTTP /embed vs in-process). Each prints its table and writes its file to $(BENCH_OUT) (not over
# the published results in benchmarks/results/: compare yours with them; BENCH_OUT=benchmarks/results to replace them).
# (The others need CUHK03/CUHK01 or run for hours: bench-cuhk01, and the commands in benchmarks/README.md.)
BENCH_OUT ?= runs/bench
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/env_workers_bench.py --repeats 3 --out $(BENCH_OUT)
	$(PY) benchmarks/precision_bench.py --out $(BENCH_OUT)
	$(PY) -m benchmarks.serve_bench --backbone resnet18 --height 128 --width 64 \
	    --requests 200 --baseline-requests 100 --concurrency 1 4 16 --out $(BENCH_OUT)

# The CUHK03 -> CUHK01 table (benchmarks/cuhk01_table.py): trains the CUHK03 source model once into
# runs/cuhk03_source, then runs the rows whose results file is missing. ARGS="--rows ... --seeds ...".
bench-cuhk01: $(STAMP)
	$(PY) benchmarks/cuhk01_table.py --cuhk01 $(CUHK01) --cuhk03 $(CUHK03) $(ARGS)

clean-runs:
	rm -rf runs
