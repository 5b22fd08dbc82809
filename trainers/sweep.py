"""Hyperparameter sweeps of the active-learning loop with Ray Tune (Kmax, ns, κ, thred, m, learning rates).

    python -m trainers.sweep --config tune_configs/sweep_synthetic.yaml [--resume] [--set num_samples=8]
    ray job submit --working-dir . -- python -m trainers.sweep --config tune_configs/sweep_paper.yaml \\
        --set overrides.data.root=/data/Market-1501-v15.09.15 --set storage_path=/shared/sweeps

The sweep file (reidloop/config/sweep.py) is validated in full before Ray is touched. Ray: the cluster
of $RAY_ADDRESS (set by `ray job submit`), else a new local instance. Each trial runs the loop
(services/tune_trial.py) and reports every round; ASHA can cut poor trials between rounds. An
interrupted sweep continues with --resume (Tuner.restore): finished trials are kept, unfinished ones
resume from their last round checkpoint. The Tuner, the trials and the result tables live in
services/sweep.py; this is the command line.

Writes to <storage_path>/<name>/: the Tune experiment (one trial_<id>/ folder per trial), sweep.yaml
(the resolved sweep), trials.parquet + trials.csv, objective_vs_params.png and best_config.yaml — a
complete LoopJob for `python -m trainers.run_job --config best_config.yaml`.
"""
from __future__ import annotations

import argparse
import sys

from reidloop.config import ConfigError
from reidloop.config.sweep import load_sweep
from services.sweep import run_sweep

from .cli import add_verbose, console, run_or_exit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep YAML (see tune_configs/sweep_*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep value, e.g. --set num_samples=8 --set overrides.data.root=/data")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (ignored on a cluster)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (and no Tune table with --verbose)")
    add_verbose(p)  # Tune's own status table and Ray's output too
    args = p.parse_args(argv)
    console(args.verbose)
    try:
        sweep = load_sweep(args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    out = run_or_exit(run_sweep, sweep, resume=args.resume, num_cpus=args.num_cpus,
                      verbose=1 if args.verbose and not args.quiet else 0, progress=not args.quiet)
    if out.best is not None:
        o = sweep.config.objective
        print(f"best trial {out.best['trial_id']}: {o.metric}={out.best[o.metric]:.4g}  -> {out.best_config}")
    print(f"sweep outputs in {out.experiment_dir}")


if __name__ == "__main__":
    main()
