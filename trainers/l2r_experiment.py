"""The CIFAR-10 active-learning experiment of L2R-AL (§IV-A): every strategy × seed, in parallel on Ray.

    python -m trainers.l2r_experiment --config tune_configs/l2r_cifar10_cpu.yaml [--set seeds=[0,1]] [--local]

Each (strategy, seed) run is a Ray task (services/l2r_runs.py) with ``cpus_per_run`` CPUs /
``gpus_per_run`` GPUs (fractions allowed); Ray is local unless ``RAY_ADDRESS`` names a cluster. ``--local``
runs them one after the other in this process. As runs finish, ``output_dir`` gets: runs.json (every
cycle of every run), runs.csv, tables.md (per-cycle test accuracy and test-loss Spearman, mean ± std over
seeds) and accuracy.png.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch

from reidloop.config.l2r import L2RExperimentJob, SorterConfig
from reidloop.config.loader import save_config, to_dict
from reidloop.l2r.cifar import load_cifar
from reidloop.l2r.experiment import aggregate, markdown_table, plot_results
from reidloop.l2r.sorter import GRUSorter, load_sorter
from services.l2r_runs import run_on_ray, run_one

from .cli import load, parser, run_or_exit
from .train_sorter import pretrain

log = logging.getLogger("l2r_experiment")


def get_sorter(job: L2RExperimentJob) -> tuple[Optional[GRUSorter], Optional[SorterConfig], dict]:
    """The sorter of ``sorter_path`` if it exists, else one trained now (and saved there or in output_dir)."""
    if "l2r" not in job.strategies:
        return None, None, {}
    path = job.sorter_path or str(Path(job.output_dir) / "sorter.pt")
    if not Path(path).is_file():
        device = "cuda" if torch.cuda.is_available() and job.gpus_per_run > 0 else "cpu"
        sorter, metrics = pretrain(job.sorter, path, device)
        return sorter, job.sorter, metrics
    sorter, cfg = load_sorter(path)
    lo, hi = cfg.lengths
    if not lo <= job.train.batch_size <= hi:
        raise ValueError(f"{path}: sorter trained on lists of {lo}..{hi}, but train.batch_size is "
                         f"{job.train.batch_size}")
    log.info("sorter loaded from %s", path)
    return sorter, cfg, pretrain_metrics(path)


def pretrain_metrics(path: str) -> dict:
    """The held-out metrics stored in a sorter checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=True).get("metrics", {})


def write_outputs(out: Path, runs: list[dict], sorter_metrics: dict, job: L2RExperimentJob, elapsed: float) -> str:
    """runs.json, runs.csv, tables.md, accuracy.png; returns the tables as markdown."""
    runs = sorted(runs, key=lambda r: (job.strategies.index(r["strategy"]), r["seed"]))
    (out / "runs.json").write_text(json.dumps({"runs": runs, "sorter": sorter_metrics, "elapsed_s": elapsed,
                                               "config": to_dict(job)}, indent=1))
    with open(out / "runs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        keys = ["cycle", "labelled", "accuracy", "spearman", "target_loss", "module_loss", "seconds"]
        w.writerow(["strategy", "seed", *keys])
        for r in runs:
            for c in r["cycles"]:
                w.writerow([r["strategy"], r["seed"], *(c[k] for k in keys)])
    done = {}
    for r in runs:
        done.setdefault(r["strategy"], []).append(r["seed"])
    tables = ("Test accuracy (%), mean ± std over seeds, by labelled-set size:\n\n"
              + markdown_table(aggregate(runs, "accuracy"))
              + "\n\nSpearman correlation between predicted and true test losses (Fig. 5), mean ± std:\n\n"
              + markdown_table(aggregate(runs, "spearman"), "{:.3f} ± {:.3f}")
              + "\n\nSeeds finished: " + ", ".join(f"{k} {sorted(v)}" for k, v in done.items()) + "\n")
    (out / "tables.md").write_text(tables)
    plot_results(runs, out / "accuracy.png", title=f"CIFAR-10, {job.train.model}, {len(done)} strategies")
    return tables


def run(job: L2RExperimentJob, local: bool = False) -> list[dict]:
    start = time.perf_counter()
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(job, out / "config.yaml")
    data = load_cifar(job.data)
    log.info("CIFAR-10 pool %d images, test %d images (%.0fs)", len(data.train_labels), len(data.test_labels),
             time.perf_counter() - start)
    sorter, sorter_cfg, sorter_metrics = get_sorter(job)
    state = sorter.state_dict() if sorter is not None else None
    sorter_cfg = to_dict(sorter_cfg) if sorter_cfg is not None else None
    jobs = [(s, seed) for seed in job.seeds for s in job.strategies]  # seed-major: early results span strategies
    job_dict, runs = to_dict(job), []

    def finished(result: dict) -> None:
        runs.append(result)
        last = result["cycles"][-1]
        log.info("done %s seed %d: final accuracy %.2f%% (%d/%d runs)", result["strategy"], result["seed"],
                 last["accuracy"], len(runs), len(jobs))
        write_outputs(out, runs, sorter_metrics, job, time.perf_counter() - start)

    if local:
        for s, seed in jobs:
            finished(run_one(job_dict, s, seed, data, state, sorter_cfg))
    else:
        run_on_ray(job, jobs, data, state, sorter_cfg, finished)
    tables = write_outputs(out, runs, sorter_metrics, job, time.perf_counter() - start)
    print(tables)
    print(f"outputs in {out} ({time.perf_counter() - start:.0f}s)")
    return runs


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--local", action="store_true", help="run sequentially in this process, without Ray")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every run's per-cycle line reaches the log
    run_or_exit(run, load(L2RExperimentJob, args), args.local)


if __name__ == "__main__":
    main()
