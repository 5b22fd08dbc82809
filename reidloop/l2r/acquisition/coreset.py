"""Core-set (Sener & Savarese, ICLR 2018, [14]) by k-center greedy, as LL4AL and L2R-AL use it.

Centres start as the labelled items; each step picks the subset item farthest (Euclidean, in the target
model's penultimate feature space) from its nearest centre and makes it a centre.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Acquisition, AcquisitionInputs


def k_center_greedy(points: np.ndarray, centres: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """``k`` rows of ``points`` chosen greedily to minimise the largest distance to a centre."""
    x = torch.as_tensor(np.asarray(points, dtype=np.float32))
    c = torch.as_tensor(np.asarray(centres, dtype=np.float32)).reshape(-1, x.shape[1])
    nearest = torch.full((len(x),), float("inf"))
    for start in range(0, len(c), chunk):
        nearest = torch.minimum(nearest, torch.cdist(x, c[start:start + chunk]).min(1).values)
    picks = []
    for _ in range(k):
        i = int(torch.argmax(nearest))  # with no centre at all, every distance is inf: item 0 starts
        picks.append(i)
        nearest = torch.minimum(nearest, (x - x[i]).norm(dim=1))
        nearest[i] = -1.0  # never picked twice
    return np.asarray(picks, dtype=np.int64)


class CoresetAcquisition(Acquisition):
    name = "coreset"
    requires = ("embeddings", "labelled_embeddings")

    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return k_center_greedy(inputs.embeddings, inputs.labelled_embeddings, k)
