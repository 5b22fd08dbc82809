"""Embedding extraction: records → (N, D) float32 features, in batches, under autocast."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.images import ReidImageDataset
from ..data.records import ImageRecord
from ..data.transforms import build_transforms
from ..progress import bar
from .precision import Precision, checked_precision


def image_loader(records: Sequence[ImageRecord], height: int, width: int, batch_size: int,
                 num_workers: int = 0, skip_bad: bool = False) -> DataLoader:
    dataset = ReidImageDataset(list(records), build_transforms(height, width, train=False), skip_bad=skip_bad)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False)


@torch.inference_mode()
def embed_batches(model: torch.nn.Module, batches, precision: Precision) -> torch.Tensor:
    """Embed an iterable of image tensors; returns fp32 features on CPU."""
    model.eval()
    out = []
    for x in batches:
        with precision.autocast():
            f = model(precision.batch(x))
        out.append(f.float().cpu())
    return torch.cat(out) if out else torch.empty(0, getattr(model, "embed_dim", 0))


def extract_features(model: torch.nn.Module, records: Sequence[ImageRecord], *, height: int, width: int,
                     precision: Precision, batch_size: int = 64, num_workers: int = 0,
                     progress: bool = True, desc: str = "features",
                     on_batch: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """The model's eval-mode embedding of every record, in order, as float32 (N, D).

    ``progress``: a bar over the batches (:func:`reidloop.progress.bar`); ``on_batch(done, total)`` after each
    batch is embedded (the Ray side reports a shard's progress to its driver with it)."""
    loader = image_loader(records, height, width, batch_size, num_workers)
    precision = checked_precision(precision, model, height, width)
    model = precision.prepare(model)
    shown = bar(len(loader), desc, enabled=progress)

    def batches():
        for i, batch in enumerate(loader):
            yield batch[0]
            if shown is not None:
                shown.update(1)
            if on_batch is not None:
                on_batch(i + 1, len(loader))

    try:
        return embed_batches(model, batches(), precision).numpy().astype(np.float32, copy=False)
    finally:
        if shown is not None:
            shown.close()
