"""The searchable gallery: ids with optional person id and camera, their embeddings and the model that made each.

A :class:`GalleryIndex` is a *snapshot*: ``add`` / ``remove`` / ``with_features`` return a new index
and never change what an existing one returns, so a search running on one snapshot is unaffected
by concurrent mutations or a model swap. Adds are amortised O(batch): embeddings live in a growing
buffer and a snapshot only reads its own first ``size`` rows, which later adds never overwrite.

Search ranks the gallery by the distance the offline evaluation uses (``reidloop.engine.evaluate``:
Euclidean between the CNN embeddings of DRAL Sec. 3.1; cosine optional) and returns the ``k``
nearest, nearest first.
"""
from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..metrics.distance import pairwise_distance
from .errors import ServingError

GALLERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class GalleryEntry:
    gallery_id: str
    person_id: Optional[int] = None
    camera: Optional[int] = None


def _optional_int(value: Any, field: str) -> Optional[int]:
    if value is None or (isinstance(value, str) and value.strip() in ("", "null")):
        return None
    if isinstance(value, bool):
        raise ServingError(422, f"{field}: expected an integer or null, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ServingError(422, f"{field}: expected an integer or null, got {value!r}")


def make_entry(gallery_id: Any = None, person_id: Any = None, camera: Any = None, where: str = "") -> GalleryEntry:
    """Validate client-supplied metadata (422 on bad values); a missing ``gallery_id`` gets a fresh one."""
    prefix = f"{where}." if where else ""
    if gallery_id is None or gallery_id == "":
        gallery_id = uuid.uuid4().hex[:16]
    elif not isinstance(gallery_id, str) or not GALLERY_ID.fullmatch(gallery_id):
        raise ServingError(422, f"{prefix}gallery_id: {gallery_id!r} must be 1-128 characters of "
                                "letters, digits and ._:- starting with a letter or digit")
    return GalleryEntry(gallery_id, _optional_int(person_id, f"{prefix}person_id"),
                        _optional_int(camera, f"{prefix}camera"))


class GalleryIndex:
    """Immutable view of the gallery; see the module docstring."""

    def __init__(self, entries: tuple[GalleryEntry, ...], versions: tuple[str, ...], buffer: np.ndarray,
                 positions: dict[str, int]) -> None:
        self._entries, self._versions, self._buffer, self._positions = entries, versions, buffer, positions
        self._stale_masks: dict[str, np.ndarray] = {}  # by model version (an index never changes)
        self._sq_norms: Optional[np.ndarray] = None  # ||row||^2 of every entry, computed on first search

    @classmethod
    def empty(cls, dim: int) -> "GalleryIndex":
        return cls((), (), np.empty((0, dim), np.float32), {})

    @classmethod
    def of(cls, entries: Sequence[GalleryEntry], versions: Sequence[str], features: np.ndarray) -> "GalleryIndex":
        """An index holding ``entries`` (unique ids) with their embeddings and the model versions that made them."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if not (len(entries) == len(versions) == features.shape[0]) or features.ndim != 2:
            raise ValueError(f"of: {len(entries)} entries, {len(versions)} versions and features of shape "
                             f"{features.shape} do not match")
        positions = {e.gallery_id: i for i, e in enumerate(entries)}
        if len(positions) != len(entries):
            raise ValueError("of: repeated gallery ids")
        return cls(tuple(entries), tuple(versions), features, positions)

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def dim(self) -> int:
        return self._buffer.shape[1]

    @property
    def entries(self) -> tuple[GalleryEntry, ...]:
        return self._entries

    @property
    def versions(self) -> tuple[str, ...]:
        """The model version (checkpoint id) that made each entry's embedding, in order."""
        return self._versions

    def stale_mask(self, version: str) -> np.ndarray:
        """Which entries were embedded by a model other than ``version`` (not searchable with it)."""
        mask = self._stale_masks.get(version)
        if mask is None:
            mask = np.fromiter((v != version for v in self._versions), bool, self.size)
            mask.flags.writeable = False
            self._stale_masks[version] = mask
        return mask

    def stale(self, version: str) -> list[str]:
        """Ids of the entries embedded by a model other than ``version``."""
        return [self._entries[i].gallery_id for i in np.flatnonzero(self.stale_mask(version))]

    @property
    def features(self) -> np.ndarray:
        view = self._buffer[: self.size]
        view.flags.writeable = False
        return view

    def __contains__(self, gallery_id: str) -> bool:
        return gallery_id in self._positions

    def add(self, entries: Sequence[GalleryEntry], features: np.ndarray, version: str,
            max_size: Optional[int] = None, replace: Sequence[str] = ()) -> "GalleryIndex":
        """A new index with ``entries`` (embedded by model ``version``) appended; ids in ``replace`` are
        dropped first (a stale entry uploaded again). 409 on a duplicate id, 507 beyond ``max_size``."""
        features = np.asarray(features, dtype=np.float32)
        if len(entries) != features.shape[0] or features.ndim != 2:
            raise ValueError(f"add: {len(entries)} entries and features of shape {features.shape} do not match")
        if features.shape[1] != self.dim:
            raise ValueError(f"add: features have dim {features.shape[1]}, the index has {self.dim}")
        base = self.remove(list(replace)) if replace else self
        ids = [e.gallery_id for e in entries]
        taken = sorted({i for i, c in Counter(ids).items() if c > 1 or i in base._positions})
        if taken:
            raise ServingError(409, f"gallery_id already in use (or repeated in the request): {taken[:20]}")
        n, m = base.size, len(entries)
        if max_size is not None and n + m > max_size:
            raise ServingError(507, f"gallery is full: {n} + {m} images exceed max_gallery_size={max_size}")
        buffer = base._buffer
        if n + m > buffer.shape[0]:
            buffer = np.empty((max(2 * buffer.shape[0], n + m, 16), self.dim), np.float32)
            buffer[:n] = base._buffer[:n]
        buffer[n:n + m] = features  # rows no existing snapshot reads (each reads only its first `size`)
        positions = dict(base._positions)
        positions.update((gid, n + j) for j, gid in enumerate(ids))
        return GalleryIndex(base._entries + tuple(entries), base._versions + (version,) * m, buffer, positions)

    def remove(self, gallery_ids: Sequence[str]) -> "GalleryIndex":
        """A new index without ``gallery_ids``; 404 naming the unknown ones (then nothing is removed)."""
        unknown = sorted({g for g in gallery_ids if g not in self._positions})
        if unknown:
            raise ServingError(404, f"unknown gallery_id: {unknown[:20]}"
                                    f"{f' (+{len(unknown) - 20} more)' if len(unknown) > 20 else ''}")
        drop = np.zeros(self.size, bool)
        drop[[self._positions[g] for g in gallery_ids]] = True
        keep = np.flatnonzero(~drop)
        entries = tuple(self._entries[i] for i in keep)
        return GalleryIndex(entries, tuple(self._versions[i] for i in keep), self._buffer[keep],
                            {e.gallery_id: j for j, e in enumerate(entries)})

    def with_features(self, features: np.ndarray, version: str) -> "GalleryIndex":
        """The same entries with new embeddings, all made by model ``version`` (the dimension may change)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != self.size:
            raise ValueError(f"with_features: expected ({self.size}, D) features, got {features.shape}")
        return GalleryIndex(self._entries, (version,) * self.size, features, self._positions)

    def _distances(self, queries: np.ndarray, metric: str) -> np.ndarray:
        """``pairwise_distance(queries, features, metric)`` for few queries against a large gallery: one BLAS
        product against the rows as they lie (no transposed copy) and the rows' norms kept per snapshot."""
        if metric not in ("euclidean", "cosine"):
            return pairwise_distance(queries, self.features, metric)
        feats = self.features
        if self._sq_norms is None:
            self._sq_norms = np.einsum("ij,ij->i", feats, feats)
        dot = queries @ feats.T
        q_sq = np.einsum("ij,ij->i", queries, queries)
        if metric == "cosine":
            denom = np.maximum(np.sqrt(q_sq), 1e-12)[:, None] * np.maximum(np.sqrt(self._sq_norms), 1e-12)[None, :]
            dot /= denom
            np.subtract(1.0, dot, out=dot)
            return np.clip(dot, 0.0, 2.0, out=dot)
        dot *= -2.0
        dot += q_sq[:, None]
        dot += self._sq_norms[None, :]
        np.maximum(dot, 0.0, out=dot)
        return np.sqrt(dot, out=dot)

    def search(self, queries: np.ndarray, k: int | Sequence[int], metric: str = "euclidean",
               version: Optional[str] = None) -> list[list[dict]]:
        """The ``k`` nearest entries of each query row, nearest first (``k`` per query or one for all).

        Only entries embedded by model ``version`` are ranked (when given): a query embedded by one model
        is never compared with another model's vectors. Each match: ``gallery_id``, ``person_id``,
        ``camera`` (None when unknown), ``distance``, ``score = 1 / (1 + distance)`` (in (0, 1], higher is
        more similar) and ``model_version``. Ties keep insertion order. One matrix product for all queries
        (``pairwise_distance``), then a partial sort: O(queries × size × dim).
        """
        queries = np.asarray(queries, dtype=np.float32)
        ks = [k] * queries.shape[0] if isinstance(k, int) else list(k)
        if len(ks) != queries.shape[0]:
            raise ValueError(f"search: {queries.shape[0]} queries but {len(ks)} values of k")
        if self.size == 0:
            return [[] for _ in ks]
        dist = self._distances(queries, metric)
        searchable = self.size
        if version is not None:
            stale = self.stale_mask(version)
            if stale.any():
                dist = np.where(stale[None, :], np.inf, dist)
                searchable = int((~stale).sum())
        top = min(max(ks), searchable)
        if top == 0:
            return [[] for _ in ks]
        if top < self.size:
            cand = np.argpartition(dist, top - 1, axis=1)[:, :top]
        else:
            cand = np.broadcast_to(np.arange(self.size), dist.shape)
        cand_d = np.take_along_axis(dist, cand, axis=1)
        order = np.lexsort((cand, cand_d), axis=1)  # by distance, then by position
        best = np.take_along_axis(cand, order, axis=1)
        best_d = np.take_along_axis(cand_d, order, axis=1)
        out = []
        for row, row_d, kq in zip(best, best_d, ks):
            matches = []
            for i, d in zip(row[:kq].tolist(), row_d[:kq].tolist()):
                e = self._entries[i]
                matches.append({"gallery_id": e.gallery_id, "person_id": e.person_id, "camera": e.camera,
                                "distance": d, "score": 1.0 / (1.0 + d), "model_version": self._versions[i]})
            out.append(matches)
        return out
