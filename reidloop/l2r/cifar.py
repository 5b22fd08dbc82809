"""CIFAR-10 for the L2R-AL classification experiment (§IV-A): the folder, the arrays, the augmentation.

The folder holds ``train/<class>/*.png`` and ``test/<class>/*.png`` (32×32 RGB), classes named as in
:data:`CLASSES`; a missing folder or a broken or wrongly sized image is named in a DatasetError.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config.l2r import CifarDataConfig
from ..data.images import list_images, load_image, require_dir
from ..data.records import DatasetError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class CifarData:
    train_images: np.ndarray  # (N, 32, 32, 3) uint8 — the pool
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray

    def channel_stats(self, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the pool in [0, 1] (§IV-A normalisation), accumulated in chunks."""
        s, s2 = np.zeros(3), np.zeros(3)
        for i in range(0, len(self.train_images), chunk):
            x = self.train_images[i:i + chunk].reshape(-1, 3).astype(np.float64) / 255.0
            s += x.sum(0)
            s2 += np.square(x).sum(0)
        n = len(self.train_images) * 32 * 32
        mean = s / n
        return mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))


def list_cifar_split(root: str | Path, split: str, per_class: Optional[int] = None) -> tuple[list[Path], np.ndarray]:
    """The image files of ``root/split/<class>/`` (first ``per_class`` by name per class) and their labels."""
    folder = require_dir(Path(root) / split, f"CIFAR-10 {split} folder")
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        found = list_images(require_dir(folder / name, f"CIFAR-10 class folder ({split})"))[:per_class]
        if not found:
            raise DatasetError(f"{folder / name}: no images")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def decode(files: Sequence[Path]) -> np.ndarray:
    """32×32 RGB image files → uint8 (N, 32, 32, 3); a missing, broken or wrongly sized file is named."""
    images = []
    for f in files:
        img = load_image(f)
        if img.size != (32, 32):
            raise DatasetError(f"{f}: expected a 32x32 CIFAR image, got {img.size[0]}x{img.size[1]}")
        images.append(np.asarray(img, dtype=np.uint8))
    return np.stack(images)


def load_cifar(cfg: CifarDataConfig) -> CifarData:
    """The pool (first ``train_per_class`` per class) and the test set (a fixed random ``test_size`` subset)."""
    train_files, ytr = list_cifar_split(cfg.root, "train", cfg.train_per_class)
    test_files, yte = list_cifar_split(cfg.root, "test")
    if cfg.test_size is not None and cfg.test_size < len(yte):
        keep = np.sort(np.random.default_rng(2019).choice(len(yte), cfg.test_size, replace=False))
        test_files, yte = [test_files[i] for i in keep], yte[keep]
    return CifarData(decode(train_files), ytr, decode(test_files), yte)


class Augment:
    """§IV-A: random 32×32 crop of the zero-padded image, random horizontal flip, per-channel normalisation."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, padding: int, flip: bool) -> None:
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.padding, self.flip = padding, flip

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 32, 32, 3) → normalised float (B, 3, 32, 32)."""
        return (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.normalise(x)
        b, _, h, w = x.shape
        if self.padding:
            p = self.padding
            xp = F.pad(x, (p, p, p, p))  # zero padding of the normalised image, as torchvision's RandomCrop
            oy = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=g).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            x = xp[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
        if self.flip:
            x = torch.where((torch.rand(b, generator=g) < 0.5).to(x.device).view(b, 1, 1, 1), x.flip(3), x)
        return x
