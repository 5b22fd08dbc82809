"""Adapted models kept by what made them (``adapt.cache_dir``), so that runs that adapt the same model to the
same pool in the same way adapt once: the strategies of a table, the trials of a sweep.

The key is a digest of everything the adaptation reads: the model's weights before it, the pool's images in
order (their real paths; the images behind a path are assumed unchanged), the ``adapt`` section (less
``cache_dir``, ``round_epochs`` and unset optional settings),
the input size and the precision it runs in (``cpu/fp32``, ``cuda/bf16``...: another kind of machine
computes another model, so it gets its own entry). Entries are written atomically (one file each), so two
runs that miss at once both adapt and the second write replaces the first with an equal model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from .. import atomic
from ..config import to_dict

log = logging.getLogger(__name__)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's state (names, shapes, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def adapt_key(model: torch.nn.Module, pool_paths: Sequence[str], adapt_cfg, height: int, width: int,
              precision: str) -> str:
    """The cache key (24 hex digits) of adapting ``model`` to ``pool_paths`` with ``adapt_cfg``."""
    # not what adapts before round 0: where it is kept, and the rounds' re-adaptation; an optional setting
    # left unset is left out, so adding one to AdaptConfig keeps the entries already made
    section = {k: v for k, v in to_dict(adapt_cfg).items()
               if k not in ("cache_dir", "round_epochs") and v is not None}
    pool = "\n".join(os.path.realpath(p) for p in pool_paths)  # the files, however the data root was written
    what = {"weights": weights_digest(model), "pool": hashlib.sha256(pool.encode()).hexdigest(),
            "adapt": section, "input": [height, width], "precision": precision}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def cached(cache_dir: str | Path, key: str) -> tuple[Path, dict] | None:
    """(model file, its record: the epochs' reports and where it was made) when ``key`` is in ``cache_dir``.
    An entry whose record cannot be read is a miss (with a warning naming it): the run adapts again and
    :func:`store` replaces it."""
    model, record = Path(cache_dir) / f"{key}.pt", Path(cache_dir) / f"{key}.json"
    if not (model.is_file() and record.is_file()):
        return None
    try:
        made = json.loads(record.read_text())
        if not isinstance(made, dict):
            raise ValueError(f"a JSON {type(made).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("adapted-model cache entry %s is unreadable (%s): adapting again, and replacing it", record, exc)
        return None
    return model, made


def store(cache_dir: str | Path, key: str, model_file: Path, record: dict) -> None:
    """Put ``model_file`` (a hard link, else a copy) and its ``record`` under ``key`` (the model first: an
    entry counts only once its record is there)."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.link_or_copy(model_file, folder / f"{key}.pt")
    atomic.write_json(folder / f"{key}.json", record)
