"""Questions per second of the Ray loop's ``ask_round`` with 1 vs 2 environment workers.

Fixed synthetic features (identity centres + noise, no CNN, no fine-tuning), the real actors
(agent, labelling service with its durable Parquet log, env workers) on a local Ray, and the
in-process ``ActiveLearningLoop.ask_round`` as the reference. Every configuration asks the same
round of queries from a fresh agent and a fresh log; the median of ``--repeats`` runs is reported.

    .venv/bin/python benchmarks/env_workers_bench.py [--queries 60] [--strategies dral random]

Prints a table and writes benchmarks/results/env_workers_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402

from reidloop.active.loop import ActiveLearningLoop  # noqa: E402
from reidloop.config import LoopJob, load_config  # noqa: E402
from reidloop.data.records import ImageRecord  # noqa: E402
from reidloop.dral.metric import fit_metric  # noqa: E402
from reidloop.strategies import RoundContext  # noqa: E402
from services.ray_loop import RayActiveLearningLoop  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "env_workers_bench.json"


def synthetic_pool(ids: int, per_id: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[ImageRecord]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    pids = np.repeat(np.arange(ids), per_id)
    features = (centres[pids] + 0.8 * rng.normal(size=(len(pids), dim))).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, [ImageRecord(f"img_{i:05d}.png", int(p), i % 2) for i, p in enumerate(pids)]


def job_for(strategy: str, workers: int, out: str) -> LoopJob:
    return load_config(LoopJob, None, [f"strategy={strategy}", f"ray.env_workers={workers}", f"output_dir={out}",
                                       "data.height=32", "data.width=16"])


def one_run(strategy: str, workers: int, features, pool, queries) -> tuple[int, float]:
    """(questions answered, seconds) of one round's ask_round; workers=0: the in-process loop."""
    with tempfile.TemporaryDirectory() as out:
        job = job_for(strategy, max(workers, 1), out)
        pids = np.array([r.pid for r in pool])
        budget = len(queries) * job.dral.kmax
        loop = (RayActiveLearningLoop if workers else ActiveLearningLoop)(job, progress=False)
        strategy_obj = loop.make_strategy()
        answer_log, oracle = loop.open_oracle(pids, budget, pool)
        metric = fit_metric(job.dral.metric, features, np.empty((0, 2), np.int64), np.empty((0, 2), np.int64))
        strategy_obj.begin_round(RoundContext(1, features, metric, np.empty((0, 2), np.int64),
                                              np.empty((0, 2), np.int64)))
        if workers:  # actors are up and the workers hold the round's features before the clock starts
            loop.episode_slots(features, metric)
            ray.get(loop.service.handle.status.remote())
        start = time.perf_counter()
        loop.ask_round(1, queries, features, metric, strategy_obj, oracle)
        seconds = time.perf_counter() - start
        answered = oracle.used
        answer_log.close()
        if workers:
            loop.shutdown()
        return answered, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=60, help="queries of the round (each asks up to kmax=10)")
    p.add_argument("--ids", type=int, default=100)
    p.add_argument("--per-id", type=int, default=4)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", nargs="+", default=["dral", "random"])
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2, 4], help="0 = in-process reference")
    p.add_argument("--out", default=str(RESULTS.parent), help="folder of env_workers_bench.json")
    args = p.parse_args()
    results = Path(args.out) / RESULTS.name

    features, pool = synthetic_pool(args.ids, args.per_id, args.dim)
    queries = np.random.default_rng(1).permutation(len(pool))[:args.queries]
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    rows = []
    for strategy in args.strategies:
        for workers in args.workers:
            one_run(strategy, workers, features, pool, queries[:5])  # warm-up: worker processes, imports
            runs = [one_run(strategy, workers, features, pool, queries) for _ in range(args.repeats)]
            answered = runs[0][0]
            assert all(a == answered for a, _ in runs), "the same round must ask the same questions"
            rate = statistics.median(a / s for a, s in runs)
            rows.append({"strategy": strategy, "env_workers": workers or "in-process", "questions": answered,
                         "questions_per_s": round(rate, 1),
                         "seconds": [round(s, 2) for _, s in runs]})
            print(f"{strategy:>7}  {str(workers or 'in-process'):>10}  {answered:>5} questions  "
                  f"{rate:7.1f} q/s  (runs: {', '.join(f'{s:.2f}s' for _, s in runs)})", flush=True)
    for strategy in args.strategies:
        by = {r["env_workers"]: r["questions_per_s"] for r in rows if r["strategy"] == strategy}
        if 1 in by and 2 in by:
            print(f"{strategy}: 2 env workers / 1 = {by[2] / by[1]:.2f}x")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "benchmark": "env_workers_bench", "args": vars(args), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "python": platform.python_version(), "ray": ray.__version__,
        "rows": rows}, indent=2))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
