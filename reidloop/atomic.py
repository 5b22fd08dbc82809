"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one.

Checkpoints, answer-log parts, round metrics and summaries are the run's truth, so every
write goes through :func:`atomic_open`: a temporary sibling is written, flushed and
fsynced, then renamed over the target with ``os.replace`` (or, ``exclusive=True``, linked to
a name that must not exist yet: a second writer fails loudly instead of overwriting), and the
directory is fsynced so that the rename itself survives a power cut; on any error the
temporary file is removed. Just before the rename each write reaches its crash point
(:mod:`reidloop.crashpoints`), where the fault-injection tests end the process.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import crashpoints


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the directory's entries (a rename, a new or deleted file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path, exclusive: bool) -> None:
    crashpoints.reach(crashpoints.point_of(path))
    if exclusive:
        try:
            os.link(tmp, path)  # fails if path exists: never overwrites
        except FileExistsError:
            raise FileExistsError(f"{path} already exists: another process is writing to "
                                  f"{path.parent}? Nothing was overwritten") from None
        os.unlink(tmp)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", exclusive: bool = False) -> Iterator[Any]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, exclusive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_or_copy(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Atomically make ``path`` a hard link to ``src`` (a copy where the filesystem has no hard links)."""
    src, path = Path(src), Path(path)
    if path.exists() and os.path.samefile(src, path):
        return  # already published (renaming a link onto its own file would do nothing)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (some network or object-store mounts): an atomic copy
        with open(src, "rb") as s, atomic_open(path) as f:
            shutil.copyfileobj(s, f)
        return
    try:
        _publish(str(tmp), path, exclusive=False)
    finally:
        tmp.unlink(missing_ok=True)


def remove_temps(directory: str | os.PathLike) -> int:
    """Delete the temporary files a crash left in ``directory`` (by its one writer, starting again)."""
    stale = list(Path(directory).glob(".*.tmp")) if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path) as f:
        torch.save(obj, f)


def write_parquet(table, path: str | os.PathLike, exclusive: bool = False) -> None:
    import pyarrow.parquet as pq

    with atomic_open(path, exclusive=exclusive) as f:
        pq.write_table(table, f)
