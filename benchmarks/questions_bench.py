"""Questions per second of the DRAL loop at ns = 30, 100, 300: learning on every answer vs a batched schedule.

DRAL's agent takes a Q-learning step after every answer (``dral.learn_every: 1``, batch_size 64); the batched
schedule takes one step of 64·k transitions every k answers (``dral.learn_every: k``, ``learn_batch`` null),
so the replay ratio (transitions sampled per answer) is the same and only the number of steps falls. Speed:
one round of ``--queries`` queries (kmax 10 each) through ``env_workers_bench``'s runner (synthetic features,
no CNN; the real oracle and answer log), per (ns, schedule), the schedules interleaved within each repeat so
load drifts hit both alike; the median of ``--repeats``. With ``--ray-workers`` the same through the Ray
loop (agent actor + env workers on a local Ray). Quality (``--quality``): the whole loop of
``tune_configs/synthetic.yaml`` (as ``active_compare.py`` runs it) per seed and schedule, at the same answer
budget; the final mAP and the paired difference.

Commands (a quiet machine; OMP_NUM_THREADS=1 as the loop's actors use):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/questions_bench.py --ns 30 100 300 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/questions_bench.py --ns 30 100 300 --repeats 3 \
        --ray-workers 1 2 4 --no-in-process
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/questions_bench.py --quality --seeds 0 1 2
    # smoke test (< 1 min): --ns 30 --queries 10 --repeats 1 --ids 40
    #                       --quality --seeds 0 --set pretrain.epochs=1 --set max_queries=20 (see --help)

Writes ``questions_bench.{json,csv}`` (speed) and ``questions_quality.{json,csv}`` to ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import env_workers_bench as ewb  # its synthetic pool and one-round runner (sets Ray's env defaults too)
import numpy as np
import ray

from reidloop.config import DralConfig
from reidloop.dral.agent import DQNAgent

QUALITY_CONFIG = "tune_configs/synthetic.yaml"


def schedules(every: int) -> dict[str, dict]:
    """Name → the DralConfig fields of each schedule compared (the replay ratio is batch_size in both)."""
    return {"per-answer": {}, f"every-{every}": {"learn_every": every}}


@contextlib.contextmanager
def dral_fields(fields: dict, oracle_fields: dict) -> Iterator[None]:
    """``env_workers_bench.one_run`` with these DralConfig (and OracleConfig) fields on its job."""
    original = ewb.job_for

    def job_for(*args):
        job = original(*args)
        return replace(job, dral=replace(job.dral, **fields), oracle=replace(job.oracle, **oracle_fields))

    ewb.job_for = job_for
    try:
        yield
    finally:
        ewb.job_for = original


@contextlib.contextmanager
def learn_timer() -> Iterator[list[float]]:
    """Seconds spent in ``DQNAgent.learn`` in this process while open (in-process runs only)."""
    spent, original = [0.0], DQNAgent.learn

    def timed(self):
        start = time.perf_counter()
        try:
            return original(self)
        finally:
            spent[0] += time.perf_counter() - start

    DQNAgent.learn = timed
    try:
        yield spent
    finally:
        DQNAgent.learn = original


def speed(args, features, pool, queries) -> list[dict]:
    """Rows of (where, ns, schedule): median questions/s over the repeats, schedules interleaved."""
    oracle = {} if args.flush_every is None else {"flush_every": args.flush_every}
    wheres = ([0] if args.in_process else []) + list(args.ray_workers)
    runs: dict[tuple, list] = {}
    for workers in wheres:
        for ns in args.ns:  # warm-up: imports, worker processes, first-touch allocations
            with dral_fields({"ns": ns}, oracle):
                ewb.one_run("dral", workers, features, pool, queries[:2])
        for rep in range(args.repeats):
            for ns in args.ns:
                for name, fields in schedules(args.every).items():
                    with dral_fields({"ns": ns, **fields}, oracle), learn_timer() as spent:
                        answered, seconds = ewb.one_run("dral", workers, features, pool, queries)
                    runs.setdefault((workers, ns, name), []).append((answered, seconds, spent[0]))
                    print(f"  {'in-process' if not workers else f'ray x{workers}'} ns={ns} {name}: "
                          f"{answered} questions in {seconds:.2f} s", flush=True)
    rows = []
    for (workers, ns, name), rs in runs.items():
        fields = schedules(args.every)[name]
        rows.append({
            "where": "in-process" if not workers else f"ray {workers} workers", "ns": ns, "schedule": name,
            "learn_every": fields.get("learn_every", 1), "update_batch": DralConfig(**fields).update_batch,
            "questions": rs[0][0], "questions_per_s": round(statistics.median(a / s for a, s, _ in rs), 2),
            "learn_ms_per_question": round(1000 * statistics.median(t / a for a, _, t in rs), 2) if not workers
            else None,
            "seconds": [round(s, 2) for _, s, _ in rs]})
    return rows


def quality(args) -> list[dict]:
    """Rows of (seed, schedule, round): the whole synthetic loop, the same pre-trained CNN for every run."""
    from active_compare import run_one

    rows, shared = [], None
    root = Path(args.out) / "questions_quality"
    for seed in args.seeds:
        for name, fields in schedules(args.every).items():
            out = root / f"seed{seed}" / name
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            if shared is not None:
                shutil.copy(shared, out / "pretrained.pt")
            sets = args.overrides + [f"dral.{k}={v}" for k, v in fields.items()]
            rounds = run_one(args.config, sets, "dral", seed, out)
            shared = shared or out / "pretrained.pt"
            for r in rounds:
                rows.append({"seed": seed, "schedule": name, "round": r.get("round"), "answers": r["answers"],
                             "mAP": r["mAP"], "rank1": r["rank1"], "wall_seconds": r["wall_seconds"]})
            print(f"  seed {seed} {name}: answers {rounds[-1]['answers']}  mAP {100 * rounds[-1]['mAP']:.2f}  "
                  f"({rounds[-1]['wall_seconds']:.0f} s)", flush=True)
    return rows


def speed_table(rows: list[dict]) -> str:
    lines = ["| where | ns | schedule | update batch | questions | q/s | learn ms/q | x per-answer |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["where"], r["ns"]): r["questions_per_s"] for r in rows if r["schedule"] == "per-answer"}
    for r in rows:
        learn = "" if r["learn_ms_per_question"] is None else f"{r['learn_ms_per_question']:.2f}"
        lines.append(f"| {r['where']} | {r['ns']} | {r['schedule']} | {r['update_batch']} | {r['questions']} | "
                     f"{r['questions_per_s']:.1f} | {learn} | {r['questions_per_s'] / base[r['where'], r['ns']]:.2f} |")
    return "\n".join(lines)


def quality_table(rows: list[dict]) -> str:
    final = {}
    for r in rows:  # the last round of each (seed, schedule)
        final[r["seed"], r["schedule"]] = r
    names = list(dict.fromkeys(r["schedule"] for r in rows))
    seeds = sorted({s for s, _ in final})
    lines = ["| schedule | answers (mean) | mAP (mean ± std) | Δ mAP vs per-answer (paired) |", "|---|---|---|---|"]
    for name in names:  # answers differ only where episodes end early (every candidate settled for free)
        maps = [100 * final[s, name]["mAP"] for s in seeds]
        answers = statistics.mean(final[s, name]["answers"] for s in seeds)
        diff = [m - 100 * final[s, names[0]]["mAP"] for s, m in zip(seeds, maps)]
        std = statistics.stdev if len(seeds) > 1 else (lambda _: 0.0)
        lines.append(f"| {name} | {answers:.0f} | {statistics.mean(maps):.2f} ± {std(maps):.2f} | "
                     f"{statistics.mean(diff):+.2f} ± {std(diff):.2f} |")
    return "\n".join(lines)


def write(out: Path, stem: str, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    from report import machine_meta  # benchmarks/report.py (this folder is on sys.path, as for env_workers_bench)

    (out / f"{stem}.json").write_text(json.dumps({
        "benchmark": "questions_bench", "args": vars(args), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
        "meta": machine_meta(), "rows": rows}, indent=2))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / stem}.json and .csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", nargs="+", type=int, default=[30, 100, 300])
    p.add_argument("--every", type=int, default=16, help="learn_every of the batched schedule (batch 64·every)")
    p.add_argument("--queries", type=int, default=40, help="queries of the round (each asks up to kmax=10)")
    p.add_argument("--ids", type=int, default=100, help="synthetic identities (4 images each; pool > max ns)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--flush-every", type=int, help="oracle.flush_every (default: the loop's, 1 = durable)")
    p.add_argument("--no-in-process", dest="in_process", action="store_false")
    p.add_argument("--ray-workers", nargs="*", type=int, default=[], help="e.g. 1 2 4 (a local Ray)")
    p.add_argument("--quality", action="store_true", help="mAP per schedule instead of speed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", default=QUALITY_CONFIG)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="quality: dotted=value")
    p.add_argument("--out", default="runs/bench", help="results folder")
    args = p.parse_args()
    out = Path(args.out)
    if args.quality:
        rows = quality(args)
        print(quality_table(rows))
        write(out, "questions_quality", rows, args)
        return
    if 4 * args.ids <= max(args.ns):
        p.error(f"--ids: {args.ids} identities (4 images each) are too few for ns={max(args.ns)}")
    features, pool = ewb.synthetic_pool(args.ids, 4, 512)
    queries = np.random.default_rng(1).permutation(len(pool))[:args.queries]
    if args.ray_workers:
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    rows = speed(args, features, pool, queries)
    print(speed_table(rows))
    write(out, "questions_bench", rows, args)


if __name__ == "__main__":
    main()
