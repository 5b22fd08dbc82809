"""The gallery on disk: every add and remove as an atomically written Parquet part, reloaded on start.

Layout of a gallery folder (``ServeConfig.gallery_dir``; by default ``gallery/`` in the served run folder)::

    writer.lease                  one writer (``reidloop.lease``): a second server on the folder is refused
    snapshot-<seq>.parquet        the whole gallery as of part <seq> (written after a re-embedding, or
                                  every ``COMPACT_EVERY`` parts); older parts and snapshots are then deleted
    parts/<seq>.parquet           one add (its rows) or one remove (tombstones), in order
    images/<gallery_id>           the uploaded bytes of an entry, only when ``keep_images`` is on

Rows: ``op`` ("add" | "remove"), ``gallery_id``, ``person_id``, ``camera`` (nullable ints),
``model_version`` (the checkpoint id that made the embedding), ``embedding`` (float32 list; empty for a
tombstone). Each file is written whole under a temporary name and renamed into place (``reidloop.atomic``),
so a crash leaves either the part or nothing; a part is written *before* the in-memory gallery changes, so
what a client was told is stored is stored. Image files are written before the part that names them and
deleted after the part that removes them; a crash between the two leaves an orphan file, swept at load.

Loading replays the newest snapshot, then the parts after it. A file that cannot be read stops the load with
an error naming it (never a silently smaller gallery).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic
from ..lease import Lease
from .gallery import GALLERY_ID, GalleryEntry

log = logging.getLogger("reidloop.serving")

COMPACT_EVERY = 256  # parts after which a snapshot replaces them (bounds start-up time and file count)
SCHEMA = pa.schema([("op", pa.string()), ("gallery_id", pa.string()), ("person_id", pa.int64()),
                    ("camera", pa.int64()), ("model_version", pa.string()), ("embedding", pa.list_(pa.float32()))])
_PART = re.compile(r"(\d{10})\.parquet")
_SNAPSHOT = re.compile(r"snapshot-(\d{10})\.parquet")


class StoreError(RuntimeError):
    """The gallery folder cannot be read as written (names the file)."""


@dataclass
class Loaded:
    """What a gallery folder holds: entries in insertion order, their embeddings and model versions."""

    entries: list[GalleryEntry]
    features: list[np.ndarray]  # one float32 vector per entry (dimensions differ across models)
    versions: list[str]


def _table(op: str, entries: Sequence[GalleryEntry], versions: Sequence[str],
           features: Optional[np.ndarray]) -> pa.Table:
    n = len(entries)
    if features is None:
        emb = pa.array([[] for _ in range(n)], pa.list_(pa.float32()))
    else:
        features = np.ascontiguousarray(features, np.float32)
        emb = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * features.shape[1]),
                                       pa.array(features.reshape(-1)))
    return pa.table({"op": pa.array([op] * n, pa.string()),
                     "gallery_id": pa.array([e.gallery_id for e in entries], pa.string()),
                     "person_id": pa.array([e.person_id for e in entries], pa.int64()),
                     "camera": pa.array([e.camera for e in entries], pa.int64()),
                     "model_version": pa.array(list(versions), pa.string()), "embedding": emb}, schema=SCHEMA)


class GalleryStore:
    """Durable gallery of one server (see the module docstring). Not thread-safe: the service calls it
    under its mutation lock."""

    def __init__(self, folder: str | os.PathLike, keep_images: bool = False, lease: bool = True,
                 compact_every: int = COMPACT_EVERY, lease_wait_s: float = 30.0) -> None:
        self.folder = Path(folder)
        self.keep_images = keep_images
        self.compact_every = compact_every
        self.parts_dir, self.images_dir = self.folder / "parts", self.folder / "images"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if keep_images:
            self.images_dir.mkdir(exist_ok=True)
        # a replica being replaced may hold it a few seconds more; a live second server is refused (LeaseHeld)
        self.lease = Lease(self.folder).acquire(wait_s=lease_wait_s) if lease else None
        for d in (self.folder, self.parts_dir, self.images_dir):
            atomic.remove_temps(d)
        self._seq = 0
        self._parts_since_snapshot = 0

    # ---------------------------------------------------------------- loading
    def _files(self) -> tuple[Optional[tuple[int, Path]], list[tuple[int, Path]]]:
        snaps = sorted((int(m.group(1)), p) for p in self.folder.iterdir() if (m := _SNAPSHOT.fullmatch(p.name)))
        parts = sorted((int(m.group(1)), p) for p in self.parts_dir.iterdir() if (m := _PART.fullmatch(p.name)))
        return (snaps[-1] if snaps else None), parts

    @staticmethod
    def _read(path: Path) -> pa.Table:
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise StoreError(f"{path}: not a readable gallery part ({type(exc).__name__}: {exc}); move it away "
                             "to start without it (its entries would be lost)") from None
        missing = [f.name for f in SCHEMA if f.name not in table.column_names]
        if missing:
            raise StoreError(f"{path}: gallery part lacks column(s) {missing}")
        return table.select(SCHEMA.names)

    def load(self) -> Loaded:
        snapshot, parts = self._files()
        start = snapshot[0] if snapshot else -1
        rows: dict[str, tuple[GalleryEntry, str, np.ndarray]] = {}
        files = ([snapshot[1]] if snapshot else []) + [p for seq, p in parts if seq > start]
        for path in files:
            t = self._read(path)
            ops, ids = t.column("op").to_pylist(), t.column("gallery_id").to_pylist()
            pids, cams = t.column("person_id").to_pylist(), t.column("camera").to_pylist()
            versions = t.column("model_version").to_pylist()
            emb = t.column("embedding").combine_chunks()
            values = emb.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            offsets = emb.offsets.to_numpy()
            for i, (op, gid) in enumerate(zip(ops, ids)):
                if op == "add":
                    rows.pop(gid, None)  # an entry uploaded again (it was stale) moves to the end, as in memory
                    rows[gid] = (GalleryEntry(gid, pids[i], cams[i]), versions[i], values[offsets[i]:offsets[i + 1]])
                elif op == "remove":
                    rows.pop(gid, None)
                else:
                    raise StoreError(f"{path}: row {i} has unknown op {op!r}")
        self._seq = max([seq for seq, _ in parts] + ([snapshot[0]] if snapshot else []), default=0)
        self._parts_since_snapshot = sum(1 for seq, _ in parts if seq > start)
        entries = [r[0] for r in rows.values()]
        self._sweep_images({e.gallery_id for e in entries})
        return Loaded(entries, [r[2] for r in rows.values()], [r[1] for r in rows.values()])

    def _sweep_images(self, ids: set[str]) -> None:
        if self.keep_images:
            for p in self.images_dir.iterdir():
                if p.name not in ids:  # written before a part that never landed, or removed after a crash
                    p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- writing
    def _next(self) -> Path:
        self._seq += 1
        return self.parts_dir / f"{self._seq:010d}.parquet"

    def _check_writer(self) -> None:
        if self.lease is not None:
            self.lease.verify()  # LeaseLost: another server took the folder over; write nothing

    def add(self, entries: Sequence[GalleryEntry], versions: Sequence[str], features: np.ndarray,
            images: Optional[Sequence[bytes]] = None) -> None:
        """Persist an add (all rows in one part); with ``keep_images``, the uploaded bytes first."""
        self._check_writer()
        if self.keep_images and images is not None:
            for e, data in zip(entries, images):
                if not GALLERY_ID.fullmatch(e.gallery_id):  # validated by make_entry; a file name must be safe
                    raise ValueError(f"gallery id {e.gallery_id!r} is not a safe file name")
                with atomic.atomic_open(self.images_dir / e.gallery_id) as f:
                    f.write(data)
        atomic.write_parquet(_table("add", entries, versions, features), self._next(), exclusive=True)
        self._after_part()

    def remove(self, gallery_ids: Sequence[str]) -> None:
        self._check_writer()
        entries = [GalleryEntry(g) for g in gallery_ids]
        atomic.write_parquet(_table("remove", entries, [""] * len(entries), None), self._next(), exclusive=True)
        if self.keep_images:
            for g in gallery_ids:
                (self.images_dir / g).unlink(missing_ok=True)
        self._after_part()

    def _after_part(self) -> None:
        self._parts_since_snapshot += 1

    def needs_snapshot(self) -> bool:
        return self._parts_since_snapshot >= self.compact_every

    def snapshot(self, entries: Sequence[GalleryEntry], versions: Sequence[str], features: np.ndarray) -> None:
        """Write the whole gallery as one snapshot, then delete the parts and snapshots it replaces."""
        self._check_writer()
        seq = self._seq
        path = self.folder / f"snapshot-{seq:010d}.parquet"
        feats = np.asarray(features, np.float32).reshape(len(entries), -1)
        atomic.write_parquet(_table("add", entries, versions, feats), path)
        for p in self.folder.iterdir():
            m = _SNAPSHOT.fullmatch(p.name)
            if m and int(m.group(1)) < seq:
                p.unlink(missing_ok=True)
        for p in self.parts_dir.iterdir():
            m = _PART.fullmatch(p.name)
            if m and int(m.group(1)) <= seq:
                p.unlink(missing_ok=True)
        self._parts_since_snapshot = 0

    def image(self, gallery_id: str) -> Optional[bytes]:
        """The kept upload of ``gallery_id`` (None when images are not kept or the file is gone)."""
        if not self.keep_images:
            return None
        try:
            return (self.images_dir / gallery_id).read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
