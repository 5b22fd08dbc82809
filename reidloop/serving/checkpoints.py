"""Following the checkpoints a training run writes, and loading one into a ready-to-serve model.

The loop writes ``<output_dir>/model.pt`` atomically (``save_checkpoint``: tmp file + ``os.replace``),
so a change shows as a new (inode, mtime, size) fingerprint and a reader never sees half a file.
A checkpoint's id is the SHA-256 of its bytes (first 12 hex digits): the same weights give the same
id on every replica, whatever the file's name or time stamp.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..engine.features import embed_batches
from ..engine.precision import Precision, checked_precision
from ..models import load_checkpoint
from .images import InputTransform

# What a run folder may hold, in order of preference: the loop's latest model (rewritten every round,
# and the pretrain job's output), else the loop's pre-trained starting point. Other *.pt files of a
# run (strategy.pt, state.pt, sorter.pt) are not Re-ID checkpoints.
CHECKPOINT_NAMES = ("model.pt", "pretrained.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be served. ``code`` is what ``GET /version`` reports (one of
    RELOAD_ERRORS); the message, which names the file, is for the server's log only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# The codes of a failed (re)load, as ``last_error.code`` of GET /version reports them.
RELOAD_ERRORS = {
    "checkpoint_missing": "the followed file, or a checkpoint in the followed folder, does not exist (yet)",
    "checkpoint_unreadable": "not a readable reidloop checkpoint (corrupt, truncated, foreign, no permission)",
    "checkpoint_mismatch": "its weights do not match the architecture its config names",
    "checkpoint_unstable": "the file kept changing while it was being read",
    "checkpoint_forward_failed": "the model fails, or gives no finite embedding, at the served input size",
    "gallery_reembed_failed": "the new model could not re-embed the gallery",
    "reload_failed": "anything else (the server's log has the details)",
}


def reload_error_code(exc: BaseException) -> str:
    """The RELOAD_ERRORS code of an exception raised while resolving or loading a checkpoint."""
    if isinstance(exc, CheckpointError):
        return exc.code
    if isinstance(exc, FileNotFoundError):
        return "checkpoint_missing"
    if isinstance(exc, OSError):  # permission, I/O error, a folder where a file was expected
        return "checkpoint_unreadable"
    return "reload_failed"


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint file itself, or the first of CHECKPOINT_NAMES in a run folder; FileNotFoundError otherwise."""
    p = Path(source)
    if p.is_file():
        return p
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"checkpoint folder {p} holds none of {', '.join(CHECKPOINT_NAMES)} (yet)")
    raise FileNotFoundError(f"checkpoint not found: {p} (expected a .pt file or a run's output folder)")


@dataclass(frozen=True)
class Fingerprint:
    """What changes when a checkpoint file is rewritten or replaced."""

    path: str
    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> "Fingerprint":
        st = path.stat()
        return cls(str(path), st.st_ino, st.st_mtime_ns, st.st_size)


class CheckpointFollower:
    """Tells when the followed source resolves to a checkpoint not tried yet (loaded or failed)."""

    def __init__(self, source: str | os.PathLike) -> None:
        self.source = str(source)
        self._tried: Optional[Fingerprint] = None

    def follow(self, source: str | os.PathLike) -> None:
        """Switch to another file or folder; its current checkpoint counts as new."""
        self.source = str(source)
        self._tried = None

    def current(self) -> tuple[Path, Fingerprint]:
        """The checkpoint the source resolves to now; FileNotFoundError when it has none (yet or any more)."""
        path = resolve_checkpoint(self.source)
        return path, Fingerprint.of(path)

    def poll(self) -> Optional[tuple[Path, Fingerprint]]:
        """``current()`` when it differs from the last checkpoint tried (loaded or failed), else None."""
        path, fp = self.current()
        return None if fp == self._tried else (path, fp)

    def mark_tried(self, fp: Fingerprint) -> None:
        self._tried = fp


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """A checkpoint's ``extra`` as JSON: tensors become lists (or a shape note when large), NaN/inf None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"<tensor {tuple(value.shape)} {value.dtype}>"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ServingModel:
    """A loaded checkpoint ready for inference, with the facts ``GET /version`` reports."""

    model: torch.nn.Module  # eval mode, on the precision's device and memory format
    precision: Precision
    transform: InputTransform
    version: str  # checkpoint id
    path: str
    metrics: dict  # the checkpoint's "extra" (round, answers, rank1, mAP, ...)
    loaded_at: str  # ISO 8601, UTC
    dim: int

    def embed(self, images: Sequence[torch.Tensor], batch_size: int = 64) -> np.ndarray:
        """uint8 (3, h, w) images → float32 (N, dim) embeddings, as ``extract_features`` computes them."""
        if len(images) == 0:
            return np.empty((0, self.dim), np.float32)
        batches = (self.transform.normalize(torch.stack(list(images[i:i + batch_size])))
                   for i in range(0, len(images), batch_size))
        return embed_batches(self.model, batches, self.precision).numpy()


def load_serving_model(path: Path, precision: Precision, transform: InputTransform) -> ServingModel:
    """Load ``path`` (save_checkpoint format) and check it embeds an input of the served size.

    Raises FileNotFoundError, or CheckpointError (a ValueError) with a RELOAD_ERRORS code and a message
    naming the file (corrupt file, foreign pickle, state dict not matching its architecture, a forward
    pass that fails or gives NaN). The messages are for the server's log: they hold the path.
    """
    for _ in range(3):  # the file may be replaced while we read it: retry until it held still
        before = Fingerprint.of(path)
        digest = file_sha256(path)
        try:
            model, extra = load_checkpoint(path)
        except ValueError as exc:  # "not a readable checkpoint", "not a reidloop checkpoint", or the
            # state dict "does not match its config" (reidloop.models.load_checkpoint)
            code = "checkpoint_mismatch" if "does not match its config" in str(exc) else "checkpoint_unreadable"
            raise CheckpointError(code, str(exc)) from exc
        if Fingerprint.of(path) == before:
            break
    else:
        raise CheckpointError("checkpoint_unstable",
                              f"{path}: changed three times while being loaded; will retry on the next change")
    probe = torch.zeros(1, 3, transform.height, transform.width, dtype=torch.uint8)
    try:  # the precision check runs the model too: a model that fails there fails here
        precision = checked_precision(precision, model, transform.height, transform.width)
        model = precision.prepare(model.eval())
        out = embed_batches(model, [transform.normalize(probe)], precision)
    except Exception as exc:
        why = " ".join(str(exc).split())[:300]
        raise CheckpointError("checkpoint_forward_failed", f"{path}: forward pass failed at input "
                              f"{transform.height}x{transform.width} ({type(exc).__name__}: {why})") from exc
    if out.ndim != 2 or out.shape[0] != 1 or not torch.isfinite(out).all():
        raise CheckpointError("checkpoint_forward_failed",
                              f"{path}: model output of shape {tuple(out.shape)} is not one finite embedding")
    return ServingModel(model=model, precision=precision, transform=transform, version=digest[:12],
                        path=str(path), metrics=jsonable(extra), loaded_at=datetime.now(timezone.utc).isoformat(),
                        dim=int(out.shape[1]))
