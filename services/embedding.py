"""Feature extraction on the cluster: the records split into contiguous shards, one Ray task each.

Shards are whole batches of ``batch_size`` images, so every image is embedded in exactly the batch
it would be in one process (``reidloop.engine.features.extract_features``) and the features are the
same. The model travels once per call as an object ref of its CPU state dict (``model_payload``, also
how ``services/ray_train.py`` hands the model to Ray Train).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Sequence

import numpy as np
import ray
import torch

from reidloop.data.records import ImageRecord
from reidloop.engine.features import extract_features
from reidloop.engine.precision import resolve_device, resolve_precision
from reidloop.models import ReidNet

from .progress import Reporter
from .ray_calls import wait


def model_payload(model: ReidNet) -> dict:
    """What rebuilds the model anywhere: architecture, classifier size and the CPU state dict."""
    return {"config": model.config(), "num_classes": model.num_classes,
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_payload(payload: dict) -> ReidNet:
    cfg = payload["config"]
    model = ReidNet(cfg["backbone"], payload["num_classes"], neck=cfg["neck"], last_stride=cfg["last_stride"])
    model.load_state_dict(payload["state"])
    return model


def _embed_shard(payload: dict, records: list[ImageRecord], height: int, width: int, amp: str,
                 batch_size: int, num_workers: int, reporter: Optional[Reporter] = None,
                 part: int = 0) -> np.ndarray:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = model_from_payload(payload)
    on_batch = None if reporter is None else lambda done, total: reporter.update(part, done, total, wait=done == total)
    with reporter.forwarding(f"embedding shard {part}") if reporter is not None else contextlib.nullcontext():
        precision = resolve_precision(amp, resolve_device("auto"))
        return extract_features(model, records, height=height, width=width, precision=precision,
                                batch_size=batch_size, num_workers=num_workers, progress=False, on_batch=on_batch)


_embed_task = ray.remote(_embed_shard)


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of whole batches, at most ``shards`` of them."""
    batches = math.ceil(n / batch_size)
    per = math.ceil(batches / max(1, min(shards, batches))) * batch_size if batches else 0
    return [(s, min(s + per, n)) for s in range(0, n, per)] if per else []


def embed_records(model: torch.nn.Module, records: Sequence[ImageRecord], *, height: int, width: int,
                  amp: str, batch_size: int, num_workers: int, shards: int, num_cpus: float,
                  num_gpus: float, timeout_s: float = 7200.0, reporter: Optional[Reporter] = None) -> np.ndarray:
    """The model's eval-mode embedding of every record, in order, computed by up to ``shards`` tasks; each
    reports its batches to ``reporter`` (one part per shard) and forwards our log lines through it."""
    records = list(records)
    bounds = shard_bounds(len(records), batch_size, shards)
    if not bounds:
        return np.empty((0, model.embed_dim), dtype=np.float32)
    ref = ray.put(model_payload(model))
    task = _embed_task.options(num_cpus=num_cpus, num_gpus=num_gpus)
    parts = wait([task.remote(ref, records[a:b], height, width, amp, batch_size, num_workers, reporter, i)
                  for i, (a, b) in enumerate(bounds)], timeout_s, f"feature extraction of {len(records)} images")
    return np.concatenate(parts)
