"""The CUHK03 -> CUHK01 table: does asking well save annotations on real people?

    .venv/bin/python benchmarks/cuhk01_table.py --cuhk01 ../shared/data/cuhk01 --cuhk03 ../shared/data/cuhk03 \
        [--rows first | zero-answer | all | ROW ...] [--seeds 0 1 2] [--kmax 5] [--table-only]

The shape of the DRAL paper's CUHK01 experiment (Tables 4-5, Fig. 4) on a CPU: an ImageNet MobileNetV2
trained on CUHK03 (``tune_configs/pretrain_cuhk03.yaml``; trained once, cached in ``runs/cuhk03_source``)
adapts to CUHK01 by asking a simulated annotator about the 485 learning identities of a split (1,940
images), and is tested on the other 486 (query camera A, gallery camera B).

Row by row: each (row, Kmax, split seed) runs the in-process loop into ``runs/<table>/<key>/`` (resumed
there if it was interrupted) and writes ``benchmarks/results/<table>/<key>.json`` when done; a row whose
results file exists is skipped, so the table fills over several sessions. A table adapts one source model,
which only the kind of CPU that trained it rebuilds bit for bit, so each CPU kind grows its own table
(``TABLES``; ``--results`` defaults to this machine's). Then the table is printed
and written (``table.md``, ``table.json``, ``curves.png``) from every results file present.

Rows (``ROWS``): ours cut rounds by answers (``tune_configs/cuhk01.yaml``: a common budget of 2n answers,
a fine-tune after every quarter of it), so strategies are compared at equal answers; the rows marked
"paper" run DRAL's Algorithm 1 as published (``tune_configs/cuhk01_paper.yaml``). The split seed sets
both the CUHK01 identity split and the run's own randomness (query order, agent, fine-tune).
Equal-answer columns: mAP at 1n, 2n and 5n answers (5n: only runs whose budget is that many: the rows
"as published", and the rows "5n answers" at Kmax 10, ``--rows five-n``; a run that browsed every query with
budget left holds its last mAP up to its budget, ``curve``), the mean mAP over [0, 2n]
answers (area under the curve / 2n), the answers needed to close 50% and 80% of the gap between Baseline and UpperBound of the
same split, and the answers needed to reach Random's mAP at 2n answers on the same split (linear
between rounds; "-" when the run never got there).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reidloop.active.loop import ActiveLearningLoop  # noqa: E402
from reidloop.config import LoopJob, PretrainJob, load_config, to_dict  # noqa: E402
from reidloop.metrics.curves import answers_to_reach, gap_closure, held_to_budget, mean_up_to, value_at  # noqa: E402

OURS, PAPER = "tune_configs/cuhk01.yaml", "tune_configs/cuhk01_paper.yaml"
SOURCE = "tune_configs/pretrain_cuhk03.yaml"
METRICS = ("mAP", "rank1", "rank5", "rank10")


@dataclass(frozen=True)
class Row:
    label: str
    config: str
    overrides: tuple[str, ...]
    note: str = ""
    kmax: int | None = None  # the row's own Kmax (it runs at that one, whatever ``--kmax`` says)
    tuned: bool = False  # its swept settings (Kmax included) come from the table's own seed-0 sweep (``SWEEP``)


ROWS: dict[str, Row] = {
    "baseline": Row("Baseline", OURS, ("strategy=baseline",), "the CUHK03 model as is"),
    "upperbound": Row("UpperBound", OURS, ("strategy=upperbound",),
                      "learners' batches and steps, every pair labelled from the truth"),
    "random": Row("Random", OURS, ("strategy=random",)),
    "nearest": Row("Nearest-first", OURS, ("strategy=nearest",)),
    "farthest": Row("Farthest-first", OURS, ("strategy=farthest",)),
    "qiu": Row("QIU", OURS, ("strategy=qiu",)),
    "qbc": Row("QBC", OURS, ("strategy=qbc",)),
    "gd": Row("GD", OURS, ("strategy=gd",)),
    "l2r": Row("L2R", OURS, ("strategy=l2r",)),
    "dral": Row("DRAL + our additions", OURS, ("strategy=dral",),
                "answer inference, settled pairs, CE over answer chains, rounds by answers"),
    "dral_noinfer": Row("DRAL + our additions, no answer inference", OURS, ("strategy=dral", "infer_answers=false"),
                        "asks pairs the answers already imply (the other additions on)"),
    "dral_batched": Row("DRAL + our additions, batched learning", OURS, ("strategy=dral", "dral.learn_every=16"),
                        "one Q-learning step on 64x16 replayed transitions every 16 answers, not one on 64 per answer"),
    "dral_batched4": Row("DRAL + our additions, batched learning every 4 answers", OURS,
                         ("strategy=dral", "dral.learn_every=4"),
                         "one Q-learning step on 64x4 replayed transitions every 4 answers, not one on 64 per answer"),
    "dral_gamma0": Row("DRAL, gamma = 0", OURS, ("strategy=dral", "dral.gamma=0.0"),
                       "greedy on the learnt expected Eq. 9 reward"),
    "dral_warm": Row("DRAL, warm-started on CUHK03", OURS,
                     ("strategy=dral", "dral.warmstart_passes=1", "warmstart_dataset=cuhk03",
                      "warmstart_root={cuhk03}", "warmstart_max_ids=300"),
                     "the agent first browses 300 labelled CUHK03 identities (free answers)"),
    "dral_links": Row("DRAL, links reward", OURS, ("strategy=dral", "dral.reward=links"),
                      "learns from the same-person links an answer establishes instead of Eq. 9"),
    "dral_links_stop": Row("DRAL, links reward, may stop", OURS,
                           ("strategy=dral", "dral.reward=links", "dral.stop=true"),
                           "ends a query's episode when no candidate is worth an answer's paced price"),
    "dral_links_warm": Row("DRAL, links reward, warm-started on CUHK03", OURS,
                           ("strategy=dral", "dral.reward=links", "dral.warmstart_passes=1",
                            "warmstart_dataset=cuhk03", "warmstart_root={cuhk03}", "warmstart_max_ids=300"),
                           "the links reward, after browsing 300 labelled CUHK03 identities"),
    # the best trial of the table's own sweep of tune_configs/sweep_cuhk01.yaml (ASHA, 12 trials, split seed 0
    # only), copied to <table>/sweep_s0/: Kmax, ns, kappa, thred and m from its best_config.yaml (tuned_settings)
    "dral_tuned": Row("DRAL + our additions, tuned on seed 0", OURS, ("strategy=dral",),
                      "Kmax, ns, kappa, thred, m from the table's seed-0 sweep", tuned=True),
    "dral_paper": Row("DRAL as published", PAPER, ("strategy=dral",),
                      "rounds by queries, triplet only at lr 5e-6 for 1 epoch, no inference"),
    "random_paper": Row("Random as published", PAPER, ("strategy=random",)),
    "upperbound_paper": Row("UpperBound as published", PAPER, ("strategy=upperbound",),
                            "fully supervised: every label, identity batches, triplet + CE"),
    # DRAL as published with one of our additions switched on alone (issue 16, item 5)
    "dral_paper_infer": Row("DRAL as published + answer inference", PAPER,
                            ("strategy=dral", "infer_answers=true"),
                            "answers implied by transitivity are not asked"),
    "dral_paper_settled": Row("DRAL as published + settled-pair labels", PAPER,
                              ("strategy=dral", "finetune.pairs=settled"),
                              "fine-tunes on every pair the answers settle, not only the asked ones"),
    "dral_paper_ce": Row("DRAL as published + CE over answer chains", PAPER,
                         ("strategy=dral", "finetune.cross_entropy=true"),
                         "cross-entropy over identities formed by chains of 'same' answers"),
}
# The zero-answer bar (issue 26): unsupervised adaptation of the source model to the pool before round 0
# (reidloop/adapt: k-reciprocal Jaccard + DBSCAN pseudo-labels, CAP camera-aware proxy memory), alone and
# under the main strategies; and the cluster-aware strategy. ADAPT: the adapt section's settings for CUHK01
# (k1 6, eps 0.5 in tune_configs/cuhk01.yaml, chosen on split seed 0 only; 10 epochs: 20 gave +0.5 mAP for twice the time).
ADAPT = ("adapt.epochs=10",)
ROWS.update({
    "unsupervised": Row("Unsupervised (0 answers)", OURS, ("strategy=baseline", *ADAPT),
                        "the source model adapted to the pool without answers"),
    "unsupervised_rho": Row("Unsupervised, radius from the distances (rho 1.6e-3)", OURS,
                            ("strategy=baseline", *ADAPT, "adapt.eps_rho=1.6e-3"),
                            "DBSCAN's radius re-derived each epoch (Song et al. 2020) instead of eps 0.5"),
    "random_adapted": Row("Random, from the adapted model", OURS, ("strategy=random", *ADAPT)),
    "nearest_adapted": Row("Nearest-first, from the adapted model", OURS, ("strategy=nearest", *ADAPT)),
    "dral_adapted": Row("DRAL + our additions, from the adapted model", OURS, ("strategy=dral", *ADAPT)),
    # the uncertainty strategies from the adapted model (issue 26 asks for the best of them, chosen on seed 0)
    "qiu_adapted": Row("QIU, from the adapted model", OURS, ("strategy=qiu", *ADAPT)),
    "qbc_adapted": Row("QBC, from the adapted model", OURS, ("strategy=qbc", *ADAPT)),
    "gd_adapted": Row("GD, from the adapted model", OURS, ("strategy=gd", *ADAPT)),
    # the UpperBound's training (every pair labelled from the truth) after the same adaptation: the bound for
    # the pipelines that adapt first, which the source-model UpperBound is not (it starts 13 mAP lower)
    "upperbound_adapted": Row("UpperBound, from the adapted model", OURS, ("strategy=upperbound", *ADAPT),
                              "the adapted model, then the learners' batches and steps with every pair labelled"),
    "cluster": Row("Cluster-aware", OURS, ("strategy=cluster",),
                   "asks where the round's clustering of the pool is least sure"),
    "cluster_adapted": Row("Cluster-aware, from the adapted model", OURS, ("strategy=cluster", *ADAPT)),
    # SPAL-style rounds: before each fine-tune the pool is re-adapted (2 epochs) with the answers so far, and
    # what they settle, as must-link / cannot-link constraints on its clustering (adapt.round_epochs)
    "nearest_adapted_rounds": Row("Nearest-first, from the adapted model, re-adapted each round", OURS,
                                  ("strategy=nearest", *ADAPT, "adapt.round_epochs=2"),
                                  "answers also constrain the pool's clustering before each fine-tune"),
    "cluster_adapted_rounds": Row("Cluster-aware, from the adapted model, re-adapted each round", OURS,
                                  ("strategy=cluster", *ADAPT, "adapt.round_epochs=2"),
                                  "answers also constrain the pool's clustering before each fine-tune"),
})
# The 5n column: the best pipeline of each kind with a budget of 5n answers (9,700 = 5 x the 1,940 learning
# images of every split), at Kmax 10 (at Kmax 5, 5n is every question the loop may ask, less what it infers)
# and a fine-tune after every 1n, so the curve has points at exactly 1n, 2n and 5n.
FIVE_N = ("oracle.budget=9700", "finetune.every=0.2")
ROWS.update({
    "nearest_5n": Row("Nearest-first, 5n answers", OURS, ("strategy=nearest", *FIVE_N),
                      "budget 5n, a fine-tune after every 1n answers", kmax=10),
    "nearest_adapted_5n": Row("Nearest-first, from the adapted model, 5n answers", OURS,
                              ("strategy=nearest", *ADAPT, *FIVE_N),
                              "budget 5n, a fine-tune after every 1n answers", kmax=10),
    "cluster_adapted_rounds_5n": Row("Cluster-aware, from the adapted model, re-adapted each round, 5n answers",
                                     OURS, ("strategy=cluster", *ADAPT, "adapt.round_epochs=2", *FIVE_N),
                                     "budget 5n, a fine-tune (after re-adapting) after every 1n answers", kmax=10),
})
FIRST_ROWS = ("baseline", "upperbound", "random", "nearest", "dral")
REFERENCES = ("baseline", "upperbound", "upperbound_paper", "upperbound_adapted", "unsupervised",
              "unsupervised_rho")  # they ask nothing: no curve against answers
NO_QUERIES = ("baseline", "unsupervised", "unsupervised_rho")  # they browse no query either (the UpperBounds browse them all)
# Names for sets of rows on the command line (``--rows first zero-answer``), in table order.
ROW_SETS: dict[str, tuple[str, ...]] = {
    "first": FIRST_ROWS,
    "zero-answer": ("baseline", "upperbound", "unsupervised", "random_adapted", "nearest_adapted", "dral_adapted",
                    "cluster", "cluster_adapted"),
    "five-n": ("nearest_5n", "nearest_adapted_5n", "cluster_adapted_rounds_5n"),
    "all": tuple(ROWS),
}


def expand_rows(names: list[str]) -> list[str]:
    """Row names and set names (``ROW_SETS``) to row names, each once, in the order given."""
    rows: list[str] = []
    for name in names:
        for row in ROW_SETS.get(name, (name,)):
            if row not in ROWS:
                raise SystemExit(f"error: unknown row {row!r}; rows: {', '.join(ROWS)}; sets: {', '.join(ROW_SETS)}")
            if row not in rows:
                rows.append(row)
    return rows


def planned_runs(rows: list[str], kmaxes: list[int], seeds: list[int]) -> list[tuple[str, int, int]]:
    """(row, Kmax, seed) to run, by seed, then Kmax, then row, each once; a row with its own Kmax
    (``Row.kmax``) runs at that one only, whatever ``--kmax`` says."""
    return list(dict.fromkeys((row, ROWS[row].kmax or kmax, seed) for seed in seeds for kmax in kmaxes for row in rows))


# The table's seed-0 sweep (tune_configs/sweep_cuhk01.yaml on the table's source model), copied beside its rows:
# its sweep.yaml names the swept keys, its best_config.yaml holds the best trial's values (benchmarks/README.md).
SWEEP = "sweep_s0"


def tuned_settings(results_dir: Path) -> tuple[int, tuple[str, ...]]:
    """Kmax and the overrides (every swept key at its best trial's value) of the table's own seed-0 sweep.
    Raises FileNotFoundError naming what is missing, ValueError when the sweep did not tune on split seed 0."""
    import yaml

    folder = results_dir / SWEEP
    best_file, sweep_file = folder / "best_config.yaml", folder / "sweep.yaml"
    missing = [f.name for f in (best_file, sweep_file) if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {' and '.join(missing)}: the tuned rows take their settings from this table's own "
            "sweep on split seed 0. Run `python -m trainers.sweep --config tune_configs/sweep_cuhk01.yaml --set "
            "overrides.data.root=CUHK01 --num-cpus 2` with this table's source model in runs/cuhk03_source, then "
            f"copy runs/sweeps/cuhk01/{{sweep.yaml,best_config.yaml,trials.csv,objective_vs_params.png}} to {folder}")
    space = (yaml.safe_load(sweep_file.read_text()) or {}).get("sweep", {}).get("space") or {}
    best = yaml.safe_load(best_file.read_text()) or {}
    seed = best.get("data", {}).get("seed")
    if seed != 0:
        raise ValueError(f"{best_file}: data.seed is {seed!r}, not 0; the table tunes on split seed 0 only")
    values = {}
    for key in space:
        node = best
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"{best_file}: no value for the swept key {key!r} of {sweep_file}")
            node = node[part]
        values[key] = node
    if "dral.kmax" not in values:
        raise ValueError(f"{sweep_file}: its space does not sweep dral.kmax")
    return int(values["dral.kmax"]), tuple(f"{k}={v}" for k, v in values.items())


def resolve_tuned(names: list[str], rows: list[str], results_dir: Path) -> list[str]:
    """Give the tuned rows among ``rows`` this table's sweep's settings (``ROWS`` updated). A tuned row whose
    table has no sweep is an error when named on the command line, and left out with a line saying why when
    it came in a set of rows (``--rows all``)."""
    kept = []
    for row in rows:
        spec = ROWS[row]
        if spec.tuned:
            try:
                kmax, settings = tuned_settings(results_dir)
            except (FileNotFoundError, ValueError) as exc:
                if row in names:
                    sys.exit(f"error: row {row}: {exc}")
                print(f"{row}: left out: {exc}", flush=True)
                continue
            ROWS[row] = replace(spec, overrides=(*spec.overrides, *settings), kmax=kmax)
        kept.append(row)
    return kept


def row_key(row: str, kmax: int, seed: int) -> str:
    return f"{row}_k{kmax}_s{seed}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags"))
        units = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
        import os

        return f"{model}, {os.cpu_count()} cores, {'/'.join(units[:2]) or 'no AVX2'}"
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def source_model(cuhk03: str | None, runs: Path) -> Path:
    """The cached CUHK03 model; trained here (``tune_configs/pretrain_cuhk03.yaml``) when missing."""
    path = runs / "cuhk03_source" / "model.pt"
    if path.exists():
        return path
    if not cuhk03:
        sys.exit(f"error: {path} does not exist; give --cuhk03 FOLDER to train the source model")
    from reidloop.engine.jobs import run_pretrain

    print(f"training the CUHK03 source model into {path.parent} ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "commit.txt").write_text(commit() + "\n")  # the code that trains it, not what runs when it ends
    job = load_config(PretrainJob, str(ROOT / SOURCE), [f"data.root={cuhk03}", f"output_dir={path.parent}"])
    run_pretrain(job, progress=False)
    return path


def record_source(source: Path, results_dir: Path) -> None:
    """The source model's held-out CUHK03 curve and cost, beside the rows (once)."""
    out = results_dir / "source_cuhk03.json"
    folder = source.parent
    if out.exists() or not (folder / "metrics.json").exists():
        return
    history = json.loads((folder / "history.json").read_text())
    out.write_text(json.dumps({
        "config_file": SOURCE, "metrics_on_cuhk03_val": json.loads((folder / "metrics.json").read_text()),
        "curve": [{"epoch": h["epoch"] + 1, "train_accuracy": h["accuracy"], "loss": h["loss"],
                   "images_per_s": h["images_per_s"], **({"val_" + k: v for k, v in h["held_out"].items()}
                                                          if "held_out" in h else {})} for h in history],
        "sha256": source_identity(source)["sha256"], "machine": machine(),
        "commit": (folder / "commit.txt").read_text().strip() if (folder / "commit.txt").exists() else commit(),
        "date": datetime.fromtimestamp((folder / "metrics.json").stat().st_mtime, timezone.utc).strftime("%Y-%m-%d"),
    }, indent=1))


def check_same_source(source: Path, results_dir: Path) -> None:
    """Exit unless ``source`` is the model the rows already in ``results_dir`` adapted: a source model retrained
    on another CPU is another model (benchmarks/README.md), and rows from two of them are not one table."""
    here = source_identity(source)
    recorded = results_dir / "source_cuhk03.json"
    if not recorded.exists():
        return
    table = json.loads(recorded.read_text())
    sha, val = table.get("sha256"), table["metrics_on_cuhk03_val"]["mAP"]
    if (sha is not None and sha != here["sha256"]) or (sha is None and here["cuhk03_val_mAP"] != val):
        sys.exit(f"error: {source} (sha256 {here['sha256']}, CUHK03 val mAP {100 * (here['cuhk03_val_mAP'] or 0):.2f}) "
                 f"is not the source model of the rows in {results_dir} (CUHK03 val mAP {100 * val:.2f}"
                 f"{', sha256 ' + sha if sha else ''}, trained on {table.get('machine', 'an unrecorded machine')}): its rows "
                 "would not be comparable with them. Give --results NEW_FOLDER to start a table from this model, or "
                 "put that source model back in place")


def check_can_retrain(results_dir: Path, runs: Path) -> None:
    """Before training a missing source model: exit unless this CPU kind is the one that trained the table's.
    Pre-training is seeded, so the same CPU kind retrains it bit for bit (checked by :func:`check_same_source`
    after training); another CPU kind's fp32 kernels give another model, and 20-40 minutes would be spent for
    nothing."""
    recorded = results_dir / "source_cuhk03.json"
    if (runs / "cuhk03_source" / "model.pt").exists() or not recorded.exists():
        return
    trained_on = _trained_on(results_dir)
    if trained_on is not None and trained_on != machine():
        others = [f"{t} ({_trained_on(results_dir.parent / t)})" for t in TABLES
                  if t != results_dir.name and _trained_on(results_dir.parent / t)]
        sys.exit(f"error: the rows in {results_dir} adapted a source model trained on {trained_on}; this machine "
                 f"({machine()}) would retrain a different one. Run this table on that kind of CPU, or give "
                 "--results NEW_FOLDER to start a table from this machine's model"
                 + (f" (the other tables and their CPUs: {', '.join(others)})" if others else ""))


# The tables that grow, oldest first: each adapts one source model, which only the CPU kind that trained it
# rebuilds bit for bit (a session's checkout has no runs/), so each CPU kind grows its own table.
TABLES = ("cuhk01_v3", "cuhk01_v4")


def _trained_on(results_dir: Path) -> str | None:
    recorded = results_dir / "source_cuhk03.json"
    return json.loads(recorded.read_text()).get("machine") if recorded.exists() else None


def default_results(root: Path, tables: tuple[str, ...] = TABLES) -> Path:
    """The table this machine can grow: the newest in ``tables`` whose source model this kind of CPU trained,
    else the oldest (whose refusal then names the CPU it needs, :func:`check_can_retrain`)."""
    here = machine()
    mine = [t for t in tables if _trained_on(root / t) == here]
    return root / (mine[-1] if mine else tables[0])


def source_identity(source: Path) -> dict:
    """Which source model a row adapted: retraining it on another CPU gives another model (see the README)."""
    import hashlib

    metrics = source.parent / "metrics.json"
    return {"sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16],
            "cuhk03_val_mAP": json.loads(metrics.read_text())["mAP"] if metrics.exists() else None}


def run_row(row: str, kmax: int, seed: int, args, source: Path) -> dict:
    spec = ROWS[row]
    key = row_key(row, kmax, seed)
    out = Path(args.runs) / Path(args.results).name / key  # one run folder per table: never another table's run
    overrides = [f"data.root={args.cuhk01}", f"data.seed={seed}", f"seed={seed}", f"oracle.seed={seed}",
                 f"dral.kmax={kmax}", f"checkpoint={source}", f"output_dir={out}",
                 *(o.format(cuhk03=args.cuhk03) for o in spec.overrides), *args.overrides]
    if any(o.startswith("adapt.epochs=") for o in spec.overrides):  # the rows of a seed adapt once (same model)
        overrides.append(f"adapt.cache_dir={Path(args.runs) / Path(args.results).name / 'adapted'}")
    if any("{cuhk03}" in o for o in spec.overrides) and not args.cuhk03:
        sys.exit(f"error: row {row} needs --cuhk03 FOLDER")
    job = load_config(LoopJob, str(ROOT / spec.config), overrides)
    start = time.perf_counter()
    result = ActiveLearningLoop(job, progress=not args.quiet).run()
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    browsed = json.loads((out / "state.json").read_text()).get("next_query")
    adapt = json.loads((out / "adapt.json").read_text()) if (out / "adapt.json").exists() else None
    return {"key": key, "row": row, "label": spec.label, "note": spec.note, "config_file": spec.config,
            "kmax": kmax, "seed": seed, "budget": summary["budget"], "pool_images": summary["pool_images"], "answers": result.answers,
            "queries_browsed": browsed, "rounds": result.rounds, "final": {k: result.final()[k] for k in (*METRICS, "mINP")},
            "wall_seconds": round(wall, 1), "resumed": result.resumed_from_round is not None,
            # the adaptation's own time, and whether this row reused another row's (then not in wall_seconds)
            "adapt_seconds": None if adapt is None else round(sum(e["seconds"] for e in adapt["epochs"]), 1),
            "adapt_reused": adapt is not None and "reused" in adapt,
            # adapt.round_epochs: per round, the constraints and each epoch's clusters against the truth
            "readapt": json.loads((out / "readapt.json").read_text()) if (out / "readapt.json").exists() else None,
            "config": to_dict(job), "source": source_identity(source), "commit": commit(), "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "overrides": overrides}


# ------------------------------------------------------------------------------------ the table
def curve(res: dict) -> tuple[list[float], list[float]]:
    """A row's mAP against answers, for comparing at equal answers: its rounds, held level to its budget if
    it ended with budget left (every query browsed: it had nothing more to ask; ``held_to_budget``)."""
    x, y = [p["answers"] for p in res["rounds"]], [p["mAP"] for p in res["rounds"]]
    return held_to_budget(x, y, res["budget"]) if res.get("budget") else (x, y)


def equal_answer_columns(res: dict, base: float | None, upper: float | None, n: int,
                         random_end: float | None = None) -> dict:
    """mAP at 1n / 2n answers, mean mAP over [0, 2n], answers to 50% / 80% gap closure and to Random's
    mAP at 2n answers of the same seed (none for the references, which ask nothing)."""
    if res["row"] in REFERENCES:
        closure = gap_closure(res["final"]["mAP"], base, upper) if (
            base is not None and upper is not None and upper > base) else None
        return {"mAP@1n": None, "mAP@2n": None, "mAP@5n": None, "mean_mAP_0_2n": None, "answers_to_50pct": None,
                "answers_to_80pct": None, "answers_to_random_2n": None, "closure": closure}
    x, y = curve(res)
    cols = {"mAP@1n": value_at(x, y, n), "mAP@2n": value_at(x, y, 2 * n), "mAP@5n": value_at(x, y, 5 * n),
            "mean_mAP_0_2n": mean_up_to(x, y, 2 * n),
            "answers_to_random_2n": None if random_end is None else answers_to_reach(x, y, random_end)}
    for frac in (0.5, 0.8):
        ok = base is not None and upper is not None and upper > base
        cols[f"answers_to_{int(frac * 100)}pct"] = answers_to_reach(x, y, base + frac * (upper - base)) if ok else None
    cols["closure"] = gap_closure(res["final"]["mAP"], base, upper) if (
        base is not None and upper is not None and upper > base) else None
    return cols


def row_seconds(res: dict) -> float:
    """What the row costs run alone: its wall time, plus the adaptation it reused from another row's run."""
    return res["wall_seconds"] + (res.get("adapt_seconds") or 0 if res.get("adapt_reused") else 0)


def _fmt(values: list, scale: float = 100.0, digits: int = 2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) < len(values):
        return f"{scale * np.mean(vals):.{digits}f} ({len(vals)}/{len(values)})"
    if len(vals) == 1:
        return f"{scale * vals[0]:.{digits}f}"
    return f"{scale * np.mean(vals):.{digits}f} ± {scale * np.std(vals, ddof=1):.{digits}f}"


def build_table(results: list[dict], n: int) -> tuple[str, list[dict]]:
    by = {(r["row"], r["kmax"], r["seed"]): r for r in results}
    base = {s: r["final"]["mAP"] for (row, _, s), r in by.items() if row == "baseline"}
    upper = {(k, s): r["final"]["mAP"] for (row, k, s), r in by.items() if row == "upperbound"}
    # the rows as published are measured against the paper's own (fully supervised) UpperBound; it trains on every
    # label whatever Kmax (finetune.upperbound: identities), so one run per seed serves the rows of every Kmax
    upper_paper = {(k, s): r["final"]["mAP"] for (row, _, s), r in by.items() if row == "upperbound_paper"
                   for k in {kk for (_, kk, _) in by}}
    random_2n = {(k, s): value_at(*curve(r), 2 * n)
                 for (row, k, s), r in by.items() if row == "random"}
    groups: dict[tuple[str, int], list[dict]] = {}
    for (row, k, _), r in sorted(by.items(), key=lambda kv: (list(ROWS).index(kv[0][0]), kv[0][1], kv[0][2])):
        groups.setdefault((row, k), []).append(r)
    lines = ["| row | Kmax | seeds | answers | queries | mAP | rank-1 | rank-5 | rank-10 | gap closed | mAP@1n | mAP@2n "
             "| mAP@5n | mean mAP 0-2n | answers to 50% | answers to 80% | answers to Random's 2n mAP | min / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    records = []
    for (row, k), rs in groups.items():
        ub = upper_paper if ROWS[row].config == PAPER else upper
        cols = [equal_answer_columns(r, base.get(r["seed"]), ub.get((k, r["seed"])), n,
                                     random_2n.get((k, r["seed"]))) for r in rs]
        rec = {"row": row, "label": rs[0]["label"], "kmax": k, "seeds": [r["seed"] for r in rs],
               "answers": [r["answers"] for r in rs],
               "queries": [None if row in NO_QUERIES else r.get("queries_browsed") for r in rs], **{m: [r["final"][m] for r in rs] for m in METRICS},
               **{c: [col[c] for col in cols] for c in cols[0]},
               # what a row costs alone: its wall time plus an adaptation it reused (row_seconds)
               "row_seconds": [row_seconds(r) for r in rs]}
        records.append(rec)
        lines.append(
            f"| {rec['label']} | {k} | {','.join(map(str, rec['seeds']))} | {_fmt(rec['answers'], 1, 0)} "
            f"| {_fmt(rec['queries'], 1, 0)} "
            f"| {_fmt(rec['mAP'])} | {_fmt(rec['rank1'])} | {_fmt(rec['rank5'])} | {_fmt(rec['rank10'])} "
            f"| {_fmt(rec['closure'])} | {_fmt(rec['mAP@1n'])} | {_fmt(rec['mAP@2n'])} | {_fmt(rec['mAP@5n'])} "
            f"| {_fmt(rec['mean_mAP_0_2n'])} | {_fmt(rec['answers_to_50pct'], 1, 0)} "
            f"| {_fmt(rec['answers_to_80pct'], 1, 0)} | {_fmt(rec['answers_to_random_2n'], 1, 0)} "
            f"| {_fmt(rec['row_seconds'], 1 / 60, 1)} |")
    return "\n".join(lines), records


def trace_table(results: list[dict]) -> tuple[str, list[dict]]:
    """What each asking row's questions did, over its whole run, per seed: "same" answers, the mean Eq. 9
    return per episode (discounted with the agent's gamma), the share of questions that skipped a nearer
    open candidate, the share of the pool's same-person links settled at the end, and the queries whose
    episode the strategy ended before Kmax (``dral.stop``)."""
    lines = ["| row | Kmax | seed | questions | same answers | mean Eq. 9 return / episode | mean Eq. 9 reward "
             "/ question | skipped a nearer one | links settled | queries stopped early |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    records = []
    for res in sorted(results, key=lambda r: (list(ROWS).index(r["row"]), r["kmax"], r["seed"])):
        rounds = [r for r in res["rounds"][1:] if r.get("episodes") == r.get("episodes")]  # nan: no trace
        if res["row"] in REFERENCES or not rounds or "episodes" not in rounds[0]:
            continue
        episodes = sum(r["episodes"] for r in rounds)
        questions = sum(r["questions"] for r in rounds)
        rec = {"row": res["row"], "kmax": res["kmax"], "seed": res["seed"], "questions": int(questions),
               "same": int(sum(r["same_answers"] for r in rounds)),
               "mean_return": sum(r["mean_return"] * r["episodes"] for r in rounds) / max(episodes, 1),
               "not_nearest": sum(r["share_not_nearest"] * r["questions"] for r in rounds) / max(questions, 1),
               "links_settled": res["rounds"][-1].get("links_settled"),
               "mean_reward": sum(r["mean_reward"] * r["questions"] for r in rounds) / max(questions, 1)
               if "mean_reward" in rounds[0] else None,
               "stopped": int(sum(r["episodes_stopped"] for r in rounds)) if "episodes_stopped" in rounds[0] else None}
        if "mean_reward" not in rounds[0] and res["config"]["dral"]["gamma"] != 0.9:
            rec["mean_return"] = None  # traced before the return was discounted by 0.9 for every row
        records.append(rec)
        links = "-" if rec["links_settled"] is None else f"{100 * rec['links_settled']:.1f}%"
        ret = "-" if rec["mean_return"] is None else f"{rec['mean_return']:.3f}"
        reward = "-" if rec["mean_reward"] is None else f"{rec['mean_reward']:.3f}"
        stopped = "-" if rec["stopped"] is None else str(rec["stopped"])
        lines.append(f"| {res['label']} | {rec['kmax']} | {rec['seed']} | {rec['questions']} | {rec['same']} "
                     f"| {ret} | {reward} | {100 * rec['not_nearest']:.1f}% | {links} | {stopped} |")
    return "\n".join(lines), records


# The kinds of pipeline a user can run (issue 26): which model the questions start from, and how they are chosen.
KINDS = ("source model + strategy", "adapted model + strategy", "cluster-aware")


def pipeline_kind(row: str) -> str | None:
    """The kind of pipeline a row is; None for the UpperBounds, which no user can run (they read the truth)."""
    if row.startswith("upperbound"):
        return None
    if row.startswith("cluster"):
        return "cluster-aware"
    if row.startswith("unsupervised") or "_adapted" in row:
        return "adapted model + strategy"
    return "source model + strategy"


def _paired_wins(mine: dict[int, float], others) -> int:
    """How many of ``others`` (seed -> value) ``mine`` beats on the mean over the seeds both have."""
    wins = 0
    for theirs in others:
        common = sorted(set(mine) & set(theirs))
        if theirs is not mine and common and (np.mean([mine[s] for s in common]) >
                                              np.mean([theirs[s] for s in common])):
            wins += 1
    return wins


def _seeds(seeds: list[int]) -> str:
    return f"seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))}"


def pipeline_table(results: list[dict], n: int) -> tuple[str, list[dict]]:
    """The best pipeline of each kind at 0, 1n, 2n and 5n answers: mean ± sd of its mAP there over seeds.

    A row's value at b answers is its curve's (``value_at``; a row that stopped earlier has none). At 0
    answers that is the model the questions start from: Baseline for the source model, Unsupervised for the
    adapted one (the rows that ask nothing only count there). A cell claims a spread over splits, so only
    the rows (a row at one Kmax) run on the most splits compete for it: compared in pairs on the splits
    both ran (a split is easier or harder for every row alike), the one that beats the most others that
    way is the best (then a higher mean). A row run on fewer splits that is ahead of it on the splits they
    share is named after it ("ahead on seed 0 alone: ..."; the one on the most splits, then the largest
    lead), so a partial row neither takes a cell nor goes unseen. The cell names its seeds.
    """
    budgets = (0, n, 2 * n, 5 * n)
    kmaxes = {r["kmax"] for r in results}
    values: dict[tuple[str, int], dict[int, dict[int, float]]] = {}  # (row, kmax) -> budget -> seed -> mAP
    for res in results:
        if pipeline_kind(res["row"]) is None:
            continue
        per = values.setdefault((res["row"], res["kmax"]), {b: {} for b in budgets})
        if res["row"] in REFERENCES:  # it asks nothing: its model is where the others start
            per[0][res["seed"]] = res["final"]["mAP"]
            continue
        x, y = curve(res)
        # at 0 answers the source and adapted kinds have their own rows (Baseline, Unsupervised)
        for b in budgets if pipeline_kind(res["row"]) == "cluster-aware" else budgets[1:]:
            v = value_at(x, y, b)
            if v is not None:
                per[b][res["seed"]] = v
    names = ("0", *(f"{m}n ({m * n:,})" for m in (1, 2, 5)))
    lines = ["| pipeline | " + " | ".join(f"best at {name} answers" for name in names) + " |",
             "|---|" + "---|" * len(budgets)]
    records = []

    def label(row: str, kmax: int) -> str:
        return ROWS[row].label + (f", Kmax {kmax}" if len(kmaxes) > 1 and row not in REFERENCES else "")

    for kind in KINDS:
        cells = []
        for b, name in zip(budgets, names):
            cands = {key: at[b] for key, at in values.items() if pipeline_kind(key[0]) == kind and at[b]}
            rec = {"kind": kind, "budget": b, "row": None, "kmax": None, "seeds": [], "mAP": [], "ahead": None}
            if cands:
                most = max(len(at) for at in cands.values())
                full = {key: at for key, at in cands.items() if len(at) == most}
                (row, kmax), best = max(full.items(), key=lambda kv: (
                    _paired_wins(kv[1], full.values()), np.mean(list(kv[1].values())),
                    -list(ROWS).index(kv[0][0])))
                seeds = sorted(best)
                rec.update(row=row, kmax=kmax, seeds=seeds, mAP=[best[s] for s in seeds])

                cell = f"{label(row, kmax)}: {_fmt(rec['mAP'])} ({_seeds(seeds)})"
                leads = {}  # rows on fewer splits, ahead of the best on the splits they share: their lead
                for key, at in cands.items():
                    common = sorted(set(at) & set(best))
                    if len(at) < most and common:
                        lead = np.mean([at[s] for s in common]) - np.mean([best[s] for s in common])
                        if lead > 0:
                            leads[key] = lead
                if leads:
                    (arow, akmax), _ = max(leads.items(), key=lambda kv: (len(cands[kv[0]]), kv[1]))
                    aseeds = sorted(cands[arow, akmax])
                    rec["ahead"] = {"row": arow, "kmax": akmax, "seeds": aseeds,
                                    "mAP": [cands[arow, akmax][s] for s in aseeds]}
                    cell += (f"; ahead on {_seeds(aseeds)}{' alone' if len(aseeds) == 1 else ''}: "
                             f"{label(arow, akmax)}: {_fmt(rec['ahead']['mAP'])}")
                cells.append(cell)
            else:
                cells.append("-")
            records.append(rec)
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines), records


def plot_curves(results: list[dict], path: Path, kmax: int) -> None:
    """mAP against answers used, one line per row (mean over seeds at shared answer counts), seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    markers = "osD^v<>ph*"
    for i, row in enumerate(ROWS):
        rs = [r for r in results if r["row"] == row and r["kmax"] == kmax]
        if not rs:
            continue
        if row in REFERENCES:  # no curve against answers: a level line at the mean
            level = 100 * np.mean([r["final"]["mAP"] for r in rs])
            ax.axhline(level, ls="--" if row != "upperbound_paper" else ":", lw=1,
                       color="grey" if row == "baseline" else "black",
                       label=f"{ROWS[row].label} {level:.1f} ({len(rs)} seed{'s' * (len(rs) > 1)})")
            continue
        top = min(r["rounds"][-1]["answers"] for r in rs)
        grid = np.unique(np.concatenate([[p["answers"] for p in r["rounds"] if p["answers"] <= top] for r in rs]))
        ys = np.array([[value_at([p["answers"] for p in r["rounds"]], [p["mAP"] for p in r["rounds"]], x)
                        for x in grid] for r in rs], dtype=float) * 100
        line, = ax.plot(grid, ys.mean(0), marker=markers[i % len(markers)], color=colours[i % 20], ms=4,
                        ls=":" if ROWS[row].config == PAPER else "-",
                        label=f"{ROWS[row].label} ({len(rs)} seed{'s' * (len(rs) > 1)})")
        if len(rs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("answers used (human verifications)")
    ax.set_ylabel("CUHK01 test mAP (%)")
    ax.set_title(f"CUHK03 -> CUHK01, Kmax = {kmax} (range over split seeds shaded)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuhk01", help="the CUHK01 folder (holding campus/)")
    p.add_argument("--cuhk03", help="the CUHK03 folder (holding labeled/), to train the source model if missing")
    p.add_argument("--rows", nargs="+", default=["first"], choices=[*ROWS, *ROW_SETS],
                   help="rows, or sets of rows: " + "; ".join(f"{k}: {' '.join(v) if k != 'all' else 'every row'}"
                                                         for k, v in ROW_SETS.items()) + " (default: first)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--kmax", nargs="+", type=int, default=[5])
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--results", default=None,
                   help="the table's folder (default: the one whose source model this kind of CPU rebuilds, "
                        "see default_results)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config override for every row run now (e.g. a calibration); recorded in the results")
    p.add_argument("--table-only", action="store_true", help="run nothing: print the table of the results present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    names, args.rows = args.rows, expand_rows(args.rows)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("reidloop.engine.precision", "reidloop.models.reid_net"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.results is None:
        args.results = str(default_results(ROOT / "benchmarks/results"))
        print(f"results folder: {args.results} (its source model was trained on this kind of CPU)"
              if _trained_on(Path(args.results)) == machine() else f"results folder: {args.results}", flush=True)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not args.cuhk01:
            p.error("--cuhk01 FOLDER is needed to run rows (or pass --table-only)")
        args.rows = resolve_tuned(names, args.rows, results_dir)
        check_can_retrain(results_dir, Path(args.runs))
        source = source_model(args.cuhk03, Path(args.runs))
        check_same_source(source, results_dir)
        record_source(source, results_dir)
        for row, kmax, seed in planned_runs(args.rows, args.kmax, args.seeds):
            path = results_dir / f"{row_key(row, kmax, seed)}.json"
            if path.exists():
                print(f"{path.name}: done, skipped", flush=True)
                continue
            print(f"--- {row_key(row, kmax, seed)} ({ROWS[row].label})", flush=True)
            res = run_row(row, kmax, seed, args, source)
            path.write_text(json.dumps(res, indent=1))
            print(f"{path.name}: {res['answers']} answers, mAP {100 * res['final']['mAP']:.2f}, "
                  f"rank-1 {100 * res['final']['rank1']:.2f}, {res['wall_seconds'] / 60:.1f} min", flush=True)
    results = [json.loads(f.read_text()) for f in sorted(results_dir.glob("*_k*_s*.json"))]
    for res in results:  # results written before the field existed: from the run folder, when present,
        state = Path(args.runs) / results_dir.name / res["key"] / "state.json"  # then kept in the results file
        if res.get("queries_browsed") is None and res["row"] not in NO_QUERIES and state.exists():
            res["queries_browsed"] = json.loads(state.read_text()).get("next_query")
            (results_dir / f"{res['key']}.json").write_text(json.dumps(res, indent=1))
    if not results:
        print(f"no results in {results_dir}")
        return
    n = results[0]["pool_images"]  # learning images of a CUHK01 split: 485 identities x 4 = 1,940
    table, records = build_table(results, n)
    traces, trace_records = trace_table(results)
    pipelines, pipeline_records = pipeline_table(results, n)
    print(table, traces, pipelines, sep="\n\n")
    (results_dir / "table.md").write_text(table + "\n\n" + traces + "\n\n" + pipelines + "\n")
    (results_dir / "table.json").write_text(json.dumps({"rows": records, "traces": trace_records,
                                                        "pipelines": pipeline_records}, indent=1))
    for kmax in sorted({r["kmax"] for r in results}):
        plot_curves(results, results_dir / f"curves_k{kmax}.png", kmax)
    print(f"wrote {results_dir}/table.md, table.json, curves_k*.png")


if __name__ == "__main__":
    main()
