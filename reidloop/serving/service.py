"""One serving replica's state, Ray-free: the current model, the gallery embedded by it, the followed checkpoint.

Consistency rule: the model, the gallery embeddings and the version are one immutable ``ServingState``
swapped by a single reference assignment. A reload embeds the whole gallery with the new model *before*
that assignment, so no request ever ranks a query embedded by one model against gallery vectors of
another; requests already running keep the snapshot they started with and finish normally.
Mutations (add / remove / reload) are serialised by a lock; reads (embed / search) take none.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..config.serve import ServeConfig
from ..engine.precision import resolve_device, resolve_precision
from .checkpoints import CheckpointFollower, ServingModel, load_serving_model
from .gallery import GalleryEntry, GalleryIndex
from .images import InputTransform


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
        self.last_error: Optional[dict] = None
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

        Returns True after a swap. A checkpoint that cannot be loaded never raises: it is recorded in
        ``last_error`` (reported by /version) and the current model keeps serving.
        """
        with self._lock:
            if source is not None and source != self.follower.source:
                self.follower.follow(source)
            try:
                found = self.follower.poll()
            except FileNotFoundError as exc:
                self._fail(self.follower.source, exc)
                return False
            if found is None:
                return False
            path, fp = found
            self.follower.mark_tried(fp)
            s = self._state
            try:
                model = load_serving_model(path, self.precision, self.transform)
                index = s.index.with_features(model.embed(s.index.images))
            except Exception as exc:  # corrupt file, wrong architecture, failing forward: keep serving
                self._fail(str(path), exc)
                return False
            self._state = ServingState(model, index)  # model, gallery vectors and version switch together
            self.last_error = None
            self.swaps += 1
            return True

    def _fail(self, checkpoint: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.last_error is None or self.last_error["error"] != error:
            self.last_error = {"checkpoint": checkpoint, "error": error,
                               "at": datetime.now(timezone.utc).isoformat()}

    def version_info(self) -> dict:
        """What ``GET /version`` reports for this replica."""
        m = self._state.model
        return {"model_version": m.version, "checkpoint_id": m.version, "checkpoint": m.path,
                "metrics": m.metrics, "loaded_at": m.loaded_at, "dim": m.dim, "source": self.follower.source,
                "precision": m.precision.describe(), "swaps": self.swaps, "last_error": self.last_error}
