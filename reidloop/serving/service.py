"""One serving replica's state, Ray-free: the current model, the gallery embedded by it, the followed checkpoint.

Consistency rule: the model, the gallery embeddings and the version are one immutable ``ServingState``
swapped by a single reference assignment, and a search ranks only the entries embedded by the model that
embedded its query. Requests already running keep the snapshot they started with and finish normally.

The gallery is durable (``reidloop.serving.store``: Parquet parts beside the checkpoint, reloaded on
start) and holds embeddings, not images; with ``keep_images`` the uploaded bytes are kept on disk. After
a model swap:

* with ``keep_images``: the new model is loaded and the gallery re-embedded from the kept images *in the
  background*, chunk by chunk, while searches keep being answered by the old model and its vectors;
  entries added or removed meanwhile are caught up under the lock, then model and vectors switch together;
* without: the new model serves at once and the entries it did not embed are *stale*: kept (id, person
  id, camera) but not searched, counted in every answer, listed by ``stale_ids``, and searchable again
  once uploaded again under the same id.

Mutations (add / remove / the final switch) are serialised by a lock; reads (embed / search) take none;
reloads are serialised among themselves by another.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..config.serve import ServeConfig
from ..engine.precision import resolve_device, resolve_precision
from .checkpoints import CheckpointError, CheckpointFollower, ServingModel, load_serving_model, reload_error_code
from .errors import ServingError
from .gallery import GalleryEntry, GalleryIndex
from .images import InputTransform
from .redact import redact_paths
from .store import GalleryStore

log = logging.getLogger("reidloop.serving")
REEMBED_CHUNK = 256  # images decoded and embedded at a time by a background re-embedding


class ServingState(NamedTuple):
    model: ServingModel
    index: GalleryIndex
    swaps: int = 0  # checkpoint swaps so far: published with the model they brought, read in one snapshot


def gallery_folder(cfg: ServeConfig) -> Optional[Path]:
    """Where the gallery is stored: ``cfg.gallery_dir``, else ``gallery/`` in the served run folder (or beside
    the served checkpoint file: the same folder for ``runs/x`` and ``runs/x/model.pt``); None when
    ``persist_gallery`` is off."""
    if not cfg.persist_gallery:
        return None
    if cfg.gallery_dir:
        return Path(cfg.gallery_dir)
    source = Path(cfg.checkpoint or ".")
    return (source if source.is_dir() else source.parent) / "gallery"


def _fit(features: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Stack per-entry vectors; one of another dimension (another model's: stale) becomes a NaN row."""
    out = np.full((len(features), dim), np.nan, np.float32)
    for i, f in enumerate(features):
        if f.shape[0] == dim:
            out[i] = f
    return out


class ReidService:
    """Embed, search and maintain a gallery with the newest loadable checkpoint of ``cfg.checkpoint``."""

    def __init__(self, cfg: ServeConfig, store: bool = True) -> None:
        if not cfg.checkpoint:
            raise ValueError("checkpoint: required (a .pt file or a training run's output folder)")
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.precision = resolve_precision(cfg.amp, resolve_device(cfg.device))
        self.transform = InputTransform(cfg.height, cfg.width)
        self.follower = CheckpointFollower(cfg.checkpoint)
        self.last_error: Optional[dict] = None  # {"code", "checkpoint_name", "at"}: what /version shows
        self._last_detail: Optional[str] = None  # the full message of that error (server log only)
        self.reembedding: Optional[str] = None  # the model version a background re-embedding is for
        self._lock = threading.Lock()  # state mutations
        self._reload_lock = threading.Lock()  # one reload at a time
        path, fp = self.follower.current()  # FileNotFoundError: nothing to serve
        self.follower.mark_tried(fp)
        model = load_serving_model(path, self.precision, self.transform)  # fails loudly at startup
        folder = gallery_folder(cfg) if store else None
        self.store = GalleryStore(folder, keep_images=cfg.keep_images) if folder is not None else None
        index = GalleryIndex.empty(model.dim)
        if self.store is not None:
            loaded = self.store.load()
            if loaded.entries:
                index = GalleryIndex.of(loaded.entries, loaded.versions, _fit(loaded.features, model.dim))
                log.info("gallery: %d entries loaded from %s (%d stale)", index.size, folder,
                         len(index.stale(model.version)))
        self._state = ServingState(model, index)

    @property
    def state(self) -> ServingState:
        return self._state

    def stale_ids(self) -> list[str]:
        s = self._state
        return s.index.stale(s.model.version)

    def embed(self, images: Sequence[torch.Tensor]) -> tuple[np.ndarray, str]:
        """uint8 (3, h, w) images → (N, dim) embeddings and the model version that made them."""
        s = self._state
        return s.model.embed(images), s.model.version

    def search(self, images: Sequence[torch.Tensor], ks: Sequence[int]) -> tuple[list[list[dict]], str, int, int]:
        """Top-``ks[i]`` gallery matches of each query image among the entries the serving model embedded
        (see ``GalleryIndex.search``), the model version, the gallery size and how many of its entries are
        stale (not searched), all of one consistent snapshot."""
        s = self._state
        v = s.model.version
        matches = s.index.search(s.model.embed(images), ks, self.cfg.metric, version=v)
        return matches, v, s.index.size, int(s.index.stale_mask(v).sum())

    def add(self, entries: Sequence[GalleryEntry], images: Sequence[torch.Tensor],
            raw: Optional[Sequence[bytes]] = None) -> ServingState:
        """Embed and index ``images`` under ``entries`` (all or none), stored before it is answered; an id
        held by a stale entry replaces it. ``raw``: the uploaded bytes, kept on disk with ``keep_images``."""
        if self.store is not None and self.store.keep_images and (raw is None or len(raw) != len(entries)):
            raise ValueError("add: keep_images needs the uploaded bytes of every image")
        with self._lock:
            s = self._state
            stale = set(s.index.stale(s.model.version))
            replace = [e.gallery_id for e in entries if e.gallery_id in stale]
            feats = s.model.embed(images)
            index = s.index.add(entries, feats, s.model.version, self.cfg.max_gallery_size, replace=replace)
            if self.store is not None:  # durable before the new state is visible or answered
                self.store.add(entries, [s.model.version] * len(entries), feats, raw)
                self._compact(index)
            self._state = s._replace(index=index)
            return self._state

    def remove(self, gallery_ids: Sequence[str]) -> ServingState:
        """Drop ``gallery_ids`` (all or none: 404 if any is unknown); returns the new state."""
        with self._lock:
            s = self._state
            index = s.index.remove(gallery_ids)
            if self.store is not None:
                self.store.remove(gallery_ids)
                self._compact(index)
            self._state = s._replace(index=index)
            return self._state

    def _compact(self, index: GalleryIndex) -> None:
        if self.store.needs_snapshot():
            self.store.snapshot(index.entries, index.versions, index.features)

    # ---------------------------------------------------------------- re-embedding
    def _embed_kept(self, model: ServingModel, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``model``'s embeddings of the kept images of ``ids`` (those whose image is missing or no longer
        decodes are left out: they stay stale)."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), REEMBED_CHUNK):
            chunk, images = [], []
            for gid in ids[start:start + REEMBED_CHUNK]:
                data = self.store.image(gid) if self.store is not None else None
                if data is None:
                    continue
                try:
                    images.append(self.transform(data, max_pixels=self.cfg.max_pixels, what=gid))
                    chunk.append(gid)
                except ServingError as exc:
                    log.warning("gallery: kept image of %s not re-embedded: %s", gid, exc.message)
            if chunk:
                out.update(zip(chunk, model.embed(images)))
        return out

    def _publish(self, model: ServingModel, index: GalleryIndex) -> None:
        """Under ``_lock``: make ``model`` and ``index`` the served state; a new model counts as a swap and
        clears the last reload error before anyone can see it served."""
        s = self._state
        swapped = model is not s.model
        if swapped:
            self.last_error = self._last_detail = None
        self._state = ServingState(model, index, s.swaps + swapped)

    def catch_up(self) -> int:
        """Re-embed, with the serving model, every entry it did not embed and whose image is kept (entries
        stored by another model). Waits for a reload in progress; see ``_catch_up``."""
        with self._reload_lock:  # a swap meanwhile would otherwise be undone by the old model's switch
            return self._catch_up(self._state.model)

    def _catch_up(self, target: ServingModel) -> int:
        """Re-embed, with ``target``, every entry it did not embed and whose image is kept; off the lock,
        then the entries changed meanwhile under it; finally model and vectors switch together. Returns how
        many entries were re-embedded. Searches are answered throughout. Caller holds ``_reload_lock``."""
        self.reembedding = target.version
        try:
            snap = self._state.index
            done = self._embed_kept(target, [g for g, v in zip((e.gallery_id for e in snap.entries), snap.versions)
                                             if v != target.version])
            with self._lock:
                s = self._state
                late = [e.gallery_id for e, v in zip(s.index.entries, s.index.versions)
                        if v != target.version and e.gallery_id not in done]
                done.update(self._embed_kept(target, late))  # added by the old model while we worked
                rows = s.index.features  # another model's rows of another dimension become NaN (stale)
                feats = _fit([done.get(e.gallery_id, row) for e, row in zip(s.index.entries, rows)], target.dim)
                versions = [target.version if e.gallery_id in done else v
                            for e, v in zip(s.index.entries, s.index.versions)]
                index = GalleryIndex.of(s.index.entries, versions, feats)
                if self.store is not None and done:
                    self.store.snapshot(index.entries, index.versions, index.features)
                self._publish(target, index)
                return sum(1 for e in s.index.entries if e.gallery_id in done)
        finally:
            self.reembedding = None

    def reload(self, source: Optional[str] = None) -> bool:
        """Swap to the followed checkpoint if it changed (or to ``source``, which is then followed).

        Returns True after a swap. With ``keep_images`` the gallery is re-embedded before the new model
        answers a search (see the module docstring). A checkpoint that cannot be loaded never raises: its
        error code is recorded in ``last_error`` (reported by /version), the full message is logged once,
        and the current model keeps serving.
        """
        with self._reload_lock:
            if source is not None and source != self.follower.source:
                self.follower.follow(source)
            try:
                found = self.follower.poll()
            except OSError as exc:  # nothing there (yet), or no permission to look
                self._fail(self.follower.source, exc)
                return False
            if found is None:
                return False
            path, fp = found
            self.follower.mark_tried(fp)
            try:  # corrupt file, wrong architecture, failing forward: keep serving
                model = load_serving_model(path, self.precision, self.transform)
            except Exception as exc:
                self._fail(str(path), exc)
                return False
            if self.store is not None and self.store.keep_images:
                try:
                    self._catch_up(model)
                except Exception as exc:
                    self._fail(str(path), CheckpointError("gallery_reembed_failed", f"{path}: re-embedding the "
                                                          f"gallery failed ({type(exc).__name__}: {exc})"))
                    return False
            else:  # nothing to re-embed from: entries the new model did not embed are stale until uploaded again
                with self._lock:
                    s = self._state
                    self._publish(model, GalleryIndex.of(
                        s.index.entries, s.index.versions, _fit(list(s.index.features), model.dim)))
            log.info("serving checkpoint %s (%s); %d gallery entries stale", model.version, path,
                     len(self.stale_ids()))
            return True

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _fail(self, checkpoint: str, exc: Exception) -> None:
        """Record a failed (re)load: its code, the file's name and the time for /version, the full message
        (with the path) for the log. The same failure again (a missing source, polled) changes neither."""
        detail = f"{type(exc).__name__}: {exc}"
        detail = detail if checkpoint in detail else f"{checkpoint}: {detail}"
        if detail != self._last_detail:
            code = reload_error_code(exc)
            log.warning("checkpoint not loaded [%s], still serving %s: %s", code, self._state.model.version, detail)
            self._last_detail = detail
            self.last_error = {"code": code, "checkpoint_name": Path(checkpoint).name,
                               "at": datetime.now(timezone.utc).isoformat()}

    def version_info(self) -> dict:
        """What ``GET /version`` reports for this replica: ids, names, times, codes; never a path."""
        s = self._state  # one snapshot: the model, its swap count and stale count agree
        m = s.model
        return redact_paths({
            "model_version": m.version, "checkpoint_id": m.version, "checkpoint_name": Path(m.path).name,
            "metrics": m.metrics, "loaded_at": m.loaded_at, "dim": m.dim, "precision": m.precision.describe(),
            "swaps": s.swaps, "last_error": self.last_error,
            "stale": int(s.index.stale_mask(m.version).sum()),
            "reembedding": self.reembedding})
