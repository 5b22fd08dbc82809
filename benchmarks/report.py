"""What every benchmark script writes beside its figures: the machine, a markdown table, the results files.

``machine_meta()`` names the CPU (and the flags that decide which kernels run: AVX2, AVX512, AVX512-BF16,
AMX), the library versions, the command, the commit and the load; ``markdown_table`` prints rows of dicts
as the tables of ``benchmarks/README.md``; ``write_results`` saves ``<name>.json`` (meta + every table)
and one CSV per table into a results folder.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine_meta() -> dict:
    """CPU model and kernel-deciding flags, versions, torch threads, date, command, commit, 1-minute load."""
    flags: set[str] = set()
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import numpy as np
    import torch

    return {"cpu": cpu, "cpu_flags": {f: f in flags for f in FLAGS}, "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": _git("status", "--porcelain", "--untracked-files=no"),
            "load_avg_1m": os.getloadavg()[0]}


def _cell(value: Any, fmt: str | Callable[[Any], str] | None) -> str:
    if value is None:
        return "-"
    if callable(fmt):
        return fmt(value)
    if fmt is not None and isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str, str | Callable | None]]) -> str:
    """A markdown table: ``columns`` are (key, header, format spec or callable); a missing value prints '-'.
    Numeric columns (a format spec given) are right-aligned."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if f is not None else "---" for _, _, f in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_results(out: Path, name: str, meta: dict, tables: Mapping[str, Sequence[Mapping]], text: str) -> list[Path]:
    """Save ``out/<name>.json`` ({"meta": meta, **tables}) and ``out/<name>_<table>.csv`` per table (scalar
    columns only) and ``out/<name>.md`` (the printed text); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps({"meta": meta, **tables}, indent=2, default=str) + "\n")
    paths[1].write_text(text + "\n")
    for table, rows in tables.items():
        if not rows:
            continue
        keys = [k for k in dict.fromkeys(k for r in rows for k in r)
                if not isinstance(rows[0].get(k), (list, dict))]
        path = out / f"{name}_{table}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        paths.append(path)
    return paths
