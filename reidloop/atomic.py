"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Checkpoints, answer-log parts, round metrics and summaries are the run's truth, so every
write goes through :func:`atomic_open`: a temporary sibling is written, flushed and
fsynced, then renamed over the target with ``os.replace``; on any error it is removed.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path) as f:
        torch.save(obj, f)


def write_parquet(table, path: str | os.PathLike) -> None:
    import pyarrow.parquet as pq

    with atomic_open(path) as f:
        pq.write_table(table, f)
