"""One serving replica's state, Ray-free: the current model, the gallery embedded by it, the followed checkpoint.

Consistency rule: the model, the gallery embeddings and the version are one immutable ``ServingState``
swapped by a single reference assignment. A reload embeds the whole gallery with the new model *before*
that assignment, so no request ever ranks a query embedded by one model against gallery vectors of
another; requests already running keep the snapshot they started with and finish normally.
Mutations (add / remove / reload) are serialised by a lock; reads (embed / search) take none.
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
from .gallery import GalleryEntry, GalleryIndex
from .images import InputTransform
from .redact import redact_paths

log = logging.getLogger("reidloop.serving")


class ServingState(NamedTuple):
    model: ServingModel
    index: GalleryIndex


class ReidService:
    """Embed, search and maintain a gallery with the newest loadable checkpoint of ``cfg.checkpoint``."""

    def __init__(self, cfg: ServeConfig) -> None:
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
        self.swaps = 0
        self._lock = threading.Lock()
        path, fp = self.follower.current()  # FileNotFoundError: nothing to serve
        self.follower.mark_tried(fp)
        model = load_serving_model(path, self.precision, self.transform)  # fails loudly at startup
        self._state = ServingState(model, GalleryIndex.empty(model.dim))

    @property
    def state(self) -> ServingState:
        return self._state

    def embed(self, images: Sequence[torch.Tensor]) -> tuple[np.ndarray, str]:
        """uint8 (3, h, w) images → (N, dim) embeddings and the model version that made them."""
        s = self._state
        return s.model.embed(images), s.model.version

    def search(self, images: Sequence[torch.Tensor], ks: Sequence[int]) -> tuple[list[list[dict]], str, int]:
        """Top-``ks[i]`` gallery matches of each query image (see ``GalleryIndex.search``), the model
        version and the gallery size they were computed with (one consistent snapshot)."""
        s = self._state
        return s.index.search(s.model.embed(images), ks, self.cfg.metric), s.model.version, s.index.size

    def add(self, entries: Sequence[GalleryEntry], images: Sequence[torch.Tensor]) -> ServingState:
        """Embed and index ``images`` under ``entries`` (all or none); returns the new state."""
        with self._lock:
            s = self._state
            index = s.index.add(entries, list(images), s.model.embed(images), self.cfg.max_gallery_size)
            self._state = ServingState(s.model, index)
            return self._state

    def remove(self, gallery_ids: Sequence[str]) -> ServingState:
        """Drop ``gallery_ids`` (all or none: 404 if any is unknown); returns the new state."""
        with self._lock:
            s = self._state
            self._state = ServingState(s.model, s.index.remove(gallery_ids))
            return self._state

    def reload(self, source: Optional[str] = None) -> bool:
        """Swap to the followed checkpoint if it changed (or to ``source``, which is then followed).

        Returns True after a swap. A checkpoint that cannot be loaded never raises: its error code is
        recorded in ``last_error`` (reported by /version), the full message is logged once, and the
        current model keeps serving.
        """
        with self._lock:
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
            s = self._state
            try:  # corrupt file, wrong architecture, failing forward: keep serving
                model = load_serving_model(path, self.precision, self.transform)
            except Exception as exc:
                self._fail(str(path), exc)
                return False
            try:
                index = s.index.with_features(model.embed(s.index.images))
            except Exception as exc:
                self._fail(str(path), CheckpointError("gallery_reembed_failed", f"{path}: re-embedding the "
                                                      f"gallery failed ({type(exc).__name__}: {exc})"))
                return False
            self._state = ServingState(model, index)  # model, gallery vectors and version switch together
            self.last_error = self._last_detail = None
            self.swaps += 1
            log.info("serving checkpoint %s (%s)", model.version, path)
            return True

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
        m = self._state.model
        return redact_paths({
            "model_version": m.version, "checkpoint_id": m.version, "checkpoint_name": Path(m.path).name,
            "metrics": m.metrics, "loaded_at": m.loaded_at, "dim": m.dim, "precision": m.precision.describe(),
            "swaps": self.swaps, "last_error": self.last_error})
