"""The (strategy, seed) runs of the L2R-AL CIFAR-10 experiment (§IV-A) as Ray tasks, for ``trainers.l2r_experiment``.

:func:`run_one` is one run with plain arguments and a plain result: the body of a Ray task, also called
in-process by ``--local``. :func:`run_on_ray` joins or starts Ray (:func:`services.ray_start.start_or_join`:
the cluster of ``$RAY_ADDRESS``, else a new local Ray with token authentication), puts the CIFAR-10 arrays
in the object store once, runs every (strategy, seed) as a task with ``cpus_per_run`` CPUs /
``gpus_per_run`` GPUs (fractions allowed, one retry) and hands each result on as it finishes.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from reidloop.config.l2r import L2RExperimentJob, SorterConfig
from reidloop.config.loader import from_dict, to_dict
from reidloop.l2r.cifar import CifarData
from reidloop.l2r.experiment import run_strategy
from reidloop.l2r.sorter import GRUSorter, freeze

from .ray_start import start_or_join


def run_one(job_dict: dict, strategy: str, seed: int, data: CifarData, sorter_state: Optional[dict],
            sorter_cfg: Optional[dict]) -> dict:
    """One (strategy, seed) run; the body of a Ray task (plain arguments, plain result)."""
    job = from_dict(L2RExperimentJob, job_dict)
    torch.set_num_threads(max(1, int(job.cpus_per_run)))
    sorter = None
    if sorter_state is not None:
        cfg = from_dict(SorterConfig, sorter_cfg)
        sorter = GRUSorter(cfg.hidden, cfg.layers)
        sorter.load_state_dict(sorter_state)
        sorter = freeze(sorter)

    def progress(row) -> None:
        spear = "" if row.spearman is None else f"  spearman {row.spearman:.3f}"
        print(f"[{strategy} seed {seed}] cycle {row.cycle}: {row.labelled} labelled  acc {row.accuracy:.2f}%"
              f"{spear}  ({row.seconds:.0f}s)", flush=True)

    return run_strategy(job, strategy, seed, data, sorter, progress).to_dict()


def run_on_ray(job: L2RExperimentJob, runs: Sequence[tuple[str, int]], data: CifarData,
               sorter_state: Optional[dict], sorter_cfg: Optional[dict], finished: Callable[[dict], None]) -> None:
    """Every (strategy, seed) of ``runs`` as a Ray task; ``finished(result)`` in the order they end."""
    import ray

    start_or_join()
    task = ray.remote(run_one).options(num_cpus=job.cpus_per_run, num_gpus=job.gpus_per_run, max_retries=1)
    job_dict, data_ref = to_dict(job), ray.put(data)
    pending = [task.remote(job_dict, s, seed, data_ref, sorter_state, sorter_cfg) for s, seed in runs]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        finished(ray.get(ready[0]))
