"""GD — graph density (DRAL §4.3, [12], Ebert et al. "RALF", CVPR 2012).

Source definition: a k-nearest-neighbour graph over the unlabelled pool with Gaussian weights
W_ij = exp(−d_ij² / (2σ²)) gives each node the density ρ_i = Σ_j W_ij / Σ_j P_ij (P: the kNN
adjacency); the densest node is labelled next, then leaves the pool, and its neighbours' densities
drop, ρ_j ← ρ_j − ρ_k W_kj, so the next pick covers another region (google/active-learning's
graph_density likewise puts a picked node below every other).

Ours: the graph is built per round on the round's features (σ = mean kNN distance), and within a
query episode the open candidate with the highest density is asked (ties: the nearer one). After
each question the asked image k is treated as RALF's labelled node: its neighbours drop as above
(clipped at 0) and its own density drops by ρ_k W_kk = ρ_k, to 0 — so a hub image is not asked
again by the next queries while other candidates with density remain; an image is "labelled" once
per pair, not removed, so when every open candidate of a query is at 0 the nearest one is asked.
The densities are checkpointed with the graph (``state_dict``).
"""
from __future__ import annotations

import numpy as np
import torch

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
        self.density[node] = 0.0

    def state_dict(self) -> dict:
        arr = lambda a: None if a is None else torch.from_numpy(np.array(a))  # noqa: E731
        return {**super().state_dict(), "density": arr(self.density), "nbr_idx": arr(self.nbr_idx),
                "nbr_w": arr(self.nbr_w)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in ("density", "nbr_idx", "nbr_w"):
            setattr(self, key, None if state[key] is None else state[key].numpy().copy())
