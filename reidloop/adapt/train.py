"""Unsupervised adaptation of a Re-ID model to an unlabelled pool (0 answers): cluster, then learn the clusters.

Each epoch (cluster-contrast / CAP): embed the pool with the current model (eval mode, the retrieval
embedding), centre it per camera (``camera_centring``), compute the k-reciprocal Jaccard distance, cluster it with DBSCAN (:func:`.clustering.cluster`,
which also enforces answers given as must-link / cannot-link constraints), build a camera-aware proxy memory
from the clustered images (:class:`.memory.ClusterMemory`) and train one pass over them in P×K batches of
pseudo-identities with the memory's contrastive loss, moving the proxies after every step. Un-clustered
images (DBSCAN's outliers) sit the epoch out. The model is trained in place.

The ground truth is never read here; ``truth`` (optional) only reports how well the pseudo-labels match it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import AdaptConfig
from ..data.images import ReidImageDataset
from ..data.records import ImageRecord
from ..data.sampler import PKSampler
from ..data.transforms import build_transforms
from ..engine.features import extract_features
from ..engine.precision import Precision, checked_precision
from ..progress import bar
from .clustering import cluster, jaccard_distance, radius
from .memory import ClusterMemory

log = logging.getLogger(__name__)


@dataclass
class AdaptEpoch:
    epoch: int
    clusters: int
    clustered: float  # share of the pool in a cluster (the rest are DBSCAN's outliers)
    cross_camera: float  # share of clusters holding more than one camera
    loss: float
    steps: int
    seconds: float
    purity: Optional[float] = None  # with ``truth``: share of clustered images whose cluster's majority is their id
    pair_precision: Optional[float] = None  # with ``truth``: same-cluster pairs that are one person
    pair_recall: Optional[float] = None  # with ``truth``: same-person pairs put in one cluster
    eps: Optional[float] = None  # the DBSCAN radius this epoch clustered with (adapt.eps, or from adapt.eps_rho)

    def line(self) -> str:
        extra = "" if self.purity is None else (f"  purity {self.purity:.3f}  pairs P {self.pair_precision:.3f} "
                                                f"R {self.pair_recall:.3f}")
        return (f"adapt epoch {self.epoch:>2}  eps {self.eps or 0:.3f}  clusters {self.clusters}  "
                f"clustered {self.clustered:.2f}  "
                f"cross-camera {self.cross_camera:.2f}  loss {self.loss:.4f}{extra}  {self.seconds:.0f}s")

    def to_dict(self) -> dict:
        return asdict(self)


def _embedding(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The retrieval embedding in training mode (the BN-neck output, as eval mode returns), unit length."""
    net = getattr(model, "module", model)  # DDP
    out = model(images)
    f = out.features if hasattr(out, "features") else out
    neck = getattr(net, "bottleneck", None)
    return F.normalize((neck(f) if neck is not None else f).float(), dim=1)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def camera_centred(feats: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """Unit features with each camera's mean subtracted, then unit length again: what a camera adds to all of
    its images no longer pulls them together (the memory still learns the model's own embedding)."""
    out = np.array(feats, dtype=np.float32, copy=True)
    for c in np.unique(cameras):
        out[cameras == c] -= out[cameras == c].mean(0)
    return unit(out)


def cluster_report(labels: np.ndarray, cameras: np.ndarray, truth: Optional[np.ndarray] = None) -> dict:
    """Cluster count, clustered share, cross-camera share and (with ``truth``) purity and pair precision/recall."""
    kept = labels >= 0
    ids = np.unique(labels[kept])
    cross = [len(np.unique(cameras[labels == c])) > 1 for c in ids]
    rep = {"clusters": int(len(ids)), "clustered": float(kept.mean()) if len(labels) else 0.0,
           "cross_camera": float(np.mean(cross)) if cross else 0.0}
    if truth is not None:
        majority = sum(np.unique(truth[labels == c], return_counts=True)[1].max() for c in ids)
        rep["purity"] = float(majority / max(kept.sum(), 1))
        same_cluster = (labels[:, None] == labels[None, :]) & kept[:, None] & kept[None, :]
        same_person = truth[:, None] == truth[None, :]
        off = ~np.eye(len(labels), dtype=bool)
        tp = (same_cluster & same_person & off).sum()
        rep["pair_precision"] = float(tp / max((same_cluster & off).sum(), 1))
        rep["pair_recall"] = float(tp / max((same_person & off).sum(), 1))
    return rep


def adapt_unsupervised(model: torch.nn.Module, records: Sequence[ImageRecord], *, height: int, width: int,
                       cfg: AdaptConfig, precision: Precision, must_link=(), cannot_link=(),
                       truth: Optional[np.ndarray] = None, num_workers: int = 0, progress: bool = True,
                       on_epoch: Optional[Callable[[AdaptEpoch], None]] = None) -> list[AdaptEpoch]:
    """Adapt ``model`` to ``records`` (no labels) for ``cfg.epochs`` epochs; the per-epoch reports."""
    records = list(records)
    cameras = np.array([r.camid for r in records])
    torch.manual_seed(cfg.seed)
    precision = checked_precision(precision, model, height, width)
    model = precision.prepare(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    transform = build_transforms(height, width, train=True)
    history: list[AdaptEpoch] = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        feats = extract_features(model, records, height=height, width=width, precision=precision,
                                 num_workers=num_workers, progress=False)
        feats = unit(feats)
        basis = camera_centred(feats, cameras) if cfg.camera_centring else feats
        dist = jaccard_distance(basis, cfg.k1, cfg.k2)
        eps = radius(dist, cfg.eps, cfg.eps_rho)
        labels = cluster(dist, eps, cfg.min_samples, must_link, cannot_link)
        report = {**cluster_report(labels, cameras, truth), "eps": eps}
        kept = np.flatnonzero(labels >= 0)
        loss_sum, steps = 0.0, 0
        if len(np.unique(labels[kept])) >= cfg.ids_per_batch:
            memory = ClusterMemory(torch.from_numpy(feats), labels, cameras, temperature=cfg.temperature,
                                   inter_temperature=cfg.temperature, momentum=cfg.momentum,
                                   hard_negatives=cfg.hard_negatives, inter_weight=cfg.inter_weight)
            memory = memory.to(precision.device)
            dataset = ReidImageDataset([records[i] for i in kept], transform)
            sampler = PKSampler(labels[kept], cfg.ids_per_batch, cfg.images_per_id, seed=cfg.seed)
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=cfg.ids_per_batch * cfg.images_per_id, sampler=sampler,
                                num_workers=num_workers, drop_last=True)
            model.train()
            shown = bar(len(loader), f"adapt {epoch}", enabled=progress)
            for images, _, _, idx in loader:
                pool_idx = torch.from_numpy(kept[idx.numpy()])
                with precision.autocast():
                    emb = _embedding(model, precision.batch(images))
                loss = memory.loss(emb, pool_idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                memory.update(emb.detach(), pool_idx)
                loss_sum += float(loss.detach())
                steps += 1
                if shown is not None:
                    shown.update(1)
            if shown is not None:
                shown.close()
        else:
            log.warning("adapt epoch %d: %d clusters, fewer than ids_per_batch=%d: no training this epoch "
                        "(raise adapt.eps or lower adapt.min_samples)", epoch, report["clusters"], cfg.ids_per_batch)
        stats = AdaptEpoch(epoch=epoch, loss=loss_sum / max(steps, 1), steps=steps,
                           seconds=time.perf_counter() - start, **report)
        log.info(stats.line())
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return history
