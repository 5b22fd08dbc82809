"""GD — graph density (DRAL §4.3, [12], Ebert et al. "RALF", CVPR 2012).

A k-nearest-neighbour graph over the pool with Gaussian weights
W_ij = exp(−d_ij² / (2σ²)) (σ = mean kNN distance) gives each node a density
ρ_i = Σ_j W_ij / Σ_j P_ij (P: the kNN adjacency). The candidate with the highest
density — the most representative — is asked; after each question the densities
of its neighbours drop, ρ_j ← ρ_j − ρ_k W_kj, so the next pick covers another region.
"""
from __future__ import annotations

import numpy as np

from ..metrics.distance import pairwise_distance
from .base import RoundContext, Strategy, masked_argmax


class GraphDensityStrategy(Strategy):
    name = "gd"

    def __init__(self, seed: int = 0, k: int = 10) -> None:
        super().__init__(seed)
        self.k = k
        self.density: np.ndarray | None = None
        self.nbr_idx: np.ndarray | None = None
        self.nbr_w: np.ndarray | None = None

    def begin_round(self, ctx: RoundContext) -> None:
        f = ctx.features
        n = len(f)
        k = min(self.k, n - 1)
        idx = np.empty((n, k), dtype=np.int64)
        dist = np.empty((n, k))
        for start in range(0, n, 1024):  # chunked kNN: memory O(1024 × n)
            D = pairwise_distance(f[start:start + 1024], f)
            D[np.arange(D.shape[0]), np.arange(start, start + D.shape[0])] = np.inf
            part = np.argpartition(D, k, axis=1)[:, :k]
            idx[start:start + len(D)] = part
            dist[start:start + len(D)] = np.take_along_axis(D, part, 1)
        sigma = max(float(dist.mean()), 1e-12)
        self.nbr_idx, self.nbr_w = idx, np.exp(-dist ** 2 / (2 * sigma ** 2))
        self.density = self.nbr_w.sum(1) / k

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        return masked_argmax(self.density[env.candidates], mask)

    def observe(self, t) -> None:
        node = t.candidate
        nbrs = self.nbr_idx[node]
        self.density[nbrs] = np.maximum(self.density[nbrs] - self.density[node] * self.nbr_w[node], 0.0)
