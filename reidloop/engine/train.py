"""Supervised Re-ID training in one process: P×K batches, cross-entropy + batch-hard triplet (Eq. 1–3).

The Ray Train loop in ``services/ray_train.py`` calls :func:`train_epoch` per worker; this
module knows nothing of distribution beyond accepting any (DDP-)wrapped module.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data.images import ReidImageDataset, relabel
from ..data.records import ImageRecord
from ..data.sampler import PKSampler
from ..data.transforms import build_transforms
from ..losses import reid_loss
from ..progress import bar
from .precision import Precision, checked_precision

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    ce: float
    triplet: float
    accuracy: float
    images_per_s: float
    lr: float

    def line(self) -> str:
        return (f"epoch {self.epoch:>3}  loss {self.loss:.4f}  ce {self.ce:.4f}  tri {self.triplet:.4f}  "
                f"acc {self.accuracy:.3f}  lr {self.lr:.2e}  {self.images_per_s:.1f} img/s")


def train_loader(records: Sequence[ImageRecord], height: int, width: int, cfg: TrainConfig,
                 num_workers: int = 0, skip_bad: bool = False) -> tuple[DataLoader, PKSampler, dict]:
    pid_to_label = relabel(records)
    dataset = ReidImageDataset(list(records), build_transforms(height, width, train=True), pid_to_label,
                               skip_bad=skip_bad)
    labels = dataset.labels  # the kept records' labels (skip_bad may drop some)
    sampler = PKSampler(labels, cfg.ids_per_batch, cfg.images_per_id, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.ids_per_batch * cfg.images_per_id, sampler=sampler,
                        num_workers=num_workers, drop_last=True)
    return loader, sampler, pid_to_label


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                            lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay)


def warmup_factor(epoch: int, cfg: TrainConfig) -> float:
    if cfg.warmup_epochs <= 0 or epoch >= cfg.warmup_epochs:
        return 1.0
    return 0.1 + 0.9 * epoch / cfg.warmup_epochs


def train_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                cfg: TrainConfig, precision: Precision, epoch: int,
                scaler: torch.amp.GradScaler | None = None, progress: bool = True) -> EpochStats:
    """One pass over ``loader``; returns averaged losses and throughput."""
    model.train()
    sums = {"loss": 0.0, "ce": 0.0, "triplet": 0.0, "correct": 0.0, "n": 0}
    start = time.perf_counter()
    shown = bar(len(loader), f"epoch {epoch}", enabled=progress)
    for images, labels, _camids, _idx in loader:
        images = precision.batch(images)
        labels = labels.to(precision.device)
        with precision.autocast():
            out = model(images)
        out = type(out)(*(t.float() for t in out))  # losses in fp32
        losses = reid_loss(out, labels, margin=cfg.triplet_margin, epsilon=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses["total"].backward()
            optimizer.step()
        n = labels.numel()
        sums["loss"] += float(losses["total"].detach()) * n
        sums["ce"] += float(losses["ce"].detach()) * n
        sums["triplet"] += float(losses["triplet"].detach()) * n
        sums["correct"] += float((out.logits.argmax(1) == labels).sum())
        sums["n"] += n
        if shown is not None:
            shown.update(1)
    if shown is not None:
        shown.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    n = max(sums["n"], 1)
    return EpochStats(epoch, sums["loss"] / n, sums["ce"] / n, sums["triplet"] / n, sums["correct"] / n,
                      sums["n"] / elapsed, optimizer.param_groups[0]["lr"])


def train_supervised(model: torch.nn.Module, records: Sequence[ImageRecord], *, height: int, width: int,
                     cfg: TrainConfig, precision: Precision, num_workers: int = 0, skip_bad: bool = False,
                     progress: bool = True, on_epoch=None) -> list[EpochStats]:
    """Train ``model`` (whose classifier has one output per identity in ``records``) for cfg.epochs."""
    torch.manual_seed(cfg.seed)
    loader, sampler, _ = train_loader(records, height, width, cfg, num_workers, skip_bad)
    precision = checked_precision(precision, model, height, width)
    model = precision.prepare(model)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None
    history = []
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * warmup_factor(epoch, cfg)
        stats = train_epoch(model, loader, optimizer, cfg, precision, epoch, scaler, progress)
        history.append(stats)
        if epoch % max(1, cfg.log_every) == 0 or epoch == cfg.epochs - 1:
            log.info(stats.line())
        if on_epoch is not None:
            on_epoch(stats)
    return history
