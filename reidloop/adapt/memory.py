"""Camera-aware proxy memory and its contrastive loss (CAP: Wang et al., AAAI 2021).

On few-camera sets plain cluster centroids gather one camera's view of a person, so CAP keeps one
proxy per (cluster, camera). For a sample x of cluster c seen by camera k, with unit features and
cosine similarities s(x, p) to the proxies:

* intra-camera: ``-log softmax(s / t_intra)[own proxy]`` over the proxies of camera k only;
* inter-camera: ``-mean_{p in P} log( exp(s_p / t_inter) / sum_{u in P ∪ H} exp(s_u / t_inter) )``
  with P all proxies of cluster c (every camera) and H the ``hard_negatives`` proxies of other
  clusters most similar to x.

loss = mean over the batch's clustered samples of intra + ``inter_weight`` · inter; outliers (-1)
contribute nothing. After each step :meth:`ClusterMemory.update` moves the proxies toward the batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .clustering import proxies as camera_proxies


class ClusterMemory(torch.nn.Module):
    """One L2-normalised proxy per (cluster, camera), built from the pool's features and pseudo-labels.

    Args:
        features: (N, D) features of the pool (normalised here); a proxy starts as the normalised mean of
            its samples.
        labels: (N,) pseudo-labels, -1 for outliers.
        cameras: (N,) camera ids.
        temperature: softmax temperature of the intra-camera term (CAP: 0.07).
        inter_temperature: softmax temperature of the inter-camera term (CAP: 0.07).
        momentum: weight the old proxy keeps in :meth:`update` (CAP's memory rate, 0.2).
        hard_negatives: proxies of other clusters per sample in the inter-camera term (CAP: 50).
        inter_weight: weight of the inter-camera term (CAP: 0.5).

    All state is buffers, so ``.to(device)`` / ``.to(dtype)`` carry it.
    """

    def __init__(self, features: Any, labels: Any, cameras: Any, *, temperature: float = 0.07,
                 inter_temperature: float = 0.07, momentum: float = 0.2, hard_negatives: int = 50,
                 inter_weight: float = 0.5) -> None:
        super().__init__()
        for name, v in (("temperature", temperature), ("inter_temperature", inter_temperature)):
            if not 0 < v < float("inf"):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise ValueError(f"hard_negatives must be an int >= 0, got {hard_negatives!r}")
        if not inter_weight >= 0:
            raise ValueError(f"inter_weight must be >= 0, got {inter_weight!r}")
        f = torch.as_tensor(features)
        if f.ndim != 2 or not f.is_floating_point():
            raise ValueError(f"features must be a floating (N, D) array, got {f.dtype} {tuple(f.shape)}")
        lab = np.asarray(torch.as_tensor(labels).cpu())
        cam = np.asarray(torch.as_tensor(cameras).cpu())
        if lab.shape != (f.shape[0],):
            raise ValueError(f"labels must have shape ({f.shape[0]},), got {lab.shape}")
        of_sample, p_cluster, p_camera = camera_proxies(lab, cam)
        self.temperature, self.inter_temperature = float(temperature), float(inter_temperature)
        self.momentum, self.hard_negatives, self.inter_weight = float(momentum), hard_negatives, float(inter_weight)
        dev = f.device
        of = torch.as_tensor(of_sample, device=dev)
        f = F.normalize(f.detach(), dim=1)
        sums = torch.zeros(len(p_cluster), f.shape[1], dtype=f.dtype, device=dev)
        keep = of >= 0
        sums.index_add_(0, of[keep], f[keep])
        self.register_buffer("proxies", F.normalize(sums, dim=1))  # (K, D)
        self.register_buffer("proxy_cluster", torch.as_tensor(p_cluster, device=dev))  # (K,)
        self.register_buffer("proxy_camera", torch.as_tensor(p_camera, device=dev))  # (K,)
        self.register_buffer("sample_proxy", of)  # (N,), -1 for outliers

    @property
    def num_clusters(self) -> int:
        return int(self.proxy_cluster.max()) + 1 if self.proxy_cluster.numel() else 0

    def centroids(self) -> torch.Tensor:
        """(C, D) each cluster's centroid: the L2-normalised mean of its proxies."""
        sums = torch.zeros(self.num_clusters, self.proxies.shape[1], dtype=self.proxies.dtype,
                           device=self.proxies.device)
        return F.normalize(sums.index_add_(0, self.proxy_cluster, self.proxies), dim=1)

    def _batch(self, feats: torch.Tensor, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, device=self.sample_proxy.device)
        if feats.ndim != 2 or feats.shape[1] != self.proxies.shape[1]:
            raise ValueError(f"feats must have shape (B, {self.proxies.shape[1]}), got {tuple(feats.shape)}")
        if idx.shape != (feats.shape[0],) or idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"idx must be an integer tensor of shape ({feats.shape[0]},), got {idx.dtype} "
                             f"{tuple(idx.shape)}")
        n = self.sample_proxy.shape[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"idx has pool indices outside [0, {n})")
        return feats, self.sample_proxy[idx.long()]

    def loss(self, feats: torch.Tensor, idx: Any) -> torch.Tensor:
        """Intra-camera + ``inter_weight`` · inter-camera loss of a batch (B, D) at pool indices ``idx`` (B,)."""
        feats, own = self._batch(feats, idx)
        keep = own >= 0
        if not bool(keep.any()):
            return (feats * 0.0).sum()  # zero, still part of the graph: backward works, no NaN
        x = F.normalize(feats[keep], dim=1)
        own = own[keep]
        sim = x @ self.proxies.to(x.dtype).t()  # (B', K)
        neg_inf = torch.finfo(sim.dtype).min
        same_cam = self.proxy_camera[None, :] == self.proxy_camera[own][:, None]
        intra = F.cross_entropy((sim / self.temperature).masked_fill(~same_cam, neg_inf), own, reduction="none")
        loss = intra
        if self.inter_weight > 0:
            pos = self.proxy_cluster[None, :] == self.proxy_cluster[own][:, None]
            chosen = pos.clone()
            k = min(self.hard_negatives, sim.shape[1])
            if k > 0:
                hard_sim, hard = sim.detach().masked_fill(pos, float("-inf")).topk(k, dim=1)
                chosen.scatter_(1, hard, torch.isfinite(hard_sim) | chosen.gather(1, hard))
            logp = F.log_softmax((sim / self.inter_temperature).masked_fill(~chosen, neg_inf), dim=1)
            inter = -(logp * pos).sum(dim=1) / pos.sum(dim=1)
            loss = loss + self.inter_weight * inter
        return loss.mean()

    @torch.no_grad()
    def update(self, feats: torch.Tensor, idx: Any) -> None:
        """Momentum update: each proxy in the batch ← normalise(momentum · proxy + (1 − momentum) · the mean
        normalised feature of its batch samples); outliers change nothing."""
        feats, own = self._batch(feats, idx)
        keep = own >= 0
        if not bool(keep.any()):
            return
        x = F.normalize(feats[keep].detach(), dim=1).to(self.proxies.dtype)
        own = own[keep]
        sums = torch.zeros_like(self.proxies).index_add_(0, own, x)
        counts = torch.zeros(self.proxies.shape[0], dtype=self.proxies.dtype,
                             device=self.proxies.device).index_add_(0, own, torch.ones_like(own, dtype=x.dtype))
        hit = counts > 0
        mean = sums[hit] / counts[hit, None]
        self.proxies[hit] = F.normalize(self.momentum * self.proxies[hit] + (1 - self.momentum) * mean, dim=1)
