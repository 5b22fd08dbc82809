"""A finished sweep's outputs, from one flat record per trial (pure: pyarrow + matplotlib).

- ``trials.parquet`` / ``trials.csv``: every trial — id, status, swept parameters, final metrics;
- ``objective_vs_params.png``: the objective against each swept parameter;
- ``best_config.yaml``: the best trial's complete LoopJob, runnable by ``trainers.run_job`` as is.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from ..config import LoopJob, to_dict

FIRST = ("trial_id", "status")
STATUSES = ("completed", "stopped_early", "error", "not_started")


def trial_status(rounds_done: int | None, rounds_total: int | None, error: bool) -> str:
    """completed: every round ran; stopped_early: the scheduler cut it; error; not_started."""
    if error:
        return "error"
    if not rounds_done:
        return "not_started"
    return "completed" if rounds_total is not None and rounds_done >= rounds_total else "stopped_early"


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (e.g. a choice of numbers and names)
        return pa.array([None if v is None else str(v) for v in values])


def trials_table(records: Sequence[dict], params: Sequence[str], metrics: Sequence[str] = ()) -> pa.Table:
    """One row per trial (sorted by id): id, status, the parameters, ``metrics``, then any other field."""
    records = sorted(records, key=lambda r: str(r["trial_id"]))
    keys = {k for r in records for k in r}
    metrics = [m for m in metrics if m in keys and m not in params]
    rest = sorted(keys - set(FIRST) - set(params) - set(metrics))
    names = [*FIRST, *params, *metrics, *rest]
    return pa.table({n: _column([r.get(n) for r in records]) for n in names})


def best_trial(table: pa.Table, metric: str, mode: str) -> dict | None:
    """The best completed trial by ``metric`` (trials cut early only if none completed)."""
    rows = [r for r in table.to_pylist() if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    done = [r for r in rows if r["status"] == "completed"] or rows
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda r: r[metric])


def write_tables(table: pa.Table, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "trials.parquet")
    pacsv.write_csv(table, out / "trials.csv")
    return out / "trials.parquet", out / "trials.csv"


def write_best_config(job: LoopJob, path: str | Path, comment: str = "") -> Path:
    """The complete job as YAML (every field, so the file stands alone), under a comment header."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    Path(path).write_text(header + yaml.safe_dump(to_dict(job), sort_keys=False))
    return Path(path)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_objective(table: pa.Table, params: Sequence[str], metric: str, mode: str, path: str | Path,
                   log_params: Sequence[str] = (), unreached: float | None = None, title: str = "") -> Path:
    """One panel per swept parameter: ``metric`` of each trial against the parameter's value.

    Completed trials are dots, trials cut early triangles (their metric is from an earlier round),
    the best trial a star; for answers_to_target, trials that never reached the target are counted in
    the title instead of being drawn at the ``unreached`` value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.to_pylist() if isinstance(r.get(metric), (int, float))]
    missed = [r for r in rows if unreached is not None and r[metric] >= unreached]
    rows = [r for r in rows if r not in missed]
    best = best_trial(pa.Table.from_pylist(rows), metric, mode) if rows else None
    n = max(1, len(params))
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 3.4 * math.ceil(n / cols)),
                             dpi=100, squeeze=False)
    for ax, p in zip(axes.flat, params):
        values = [r.get(p) for r in rows]
        if _numeric(values):
            pos = values
            if p in log_params:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in values})
            pos = [cats.index(str(v)) for v in values]
            ax.set_xticks(range(len(cats)), cats)
        for status, marker in (("completed", "o"), ("stopped_early", "v")):
            sel = [i for i, r in enumerate(rows) if r["status"] == status]
            if sel:
                ax.scatter([pos[i] for i in sel], [rows[i][metric] for i in sel], marker=marker,
                           alpha=0.8, label=status.replace("_", " "))
        if best is not None:
            i = next(i for i, r in enumerate(rows) if r["trial_id"] == best["trial_id"])
            ax.scatter([pos[i]], [rows[i][metric]], marker="*", s=220, c="red", label="best", zorder=3)
        ax.set_xlabel(p)
        ax.set_ylabel(f"{metric} ({mode})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    note = f" — {len(missed)} trial(s) never reached the target" if missed else ""
    fig.suptitle((title or f"{metric} per trial") + note, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
