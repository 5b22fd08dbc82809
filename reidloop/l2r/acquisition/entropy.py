"""Entropy sampling (§II-A, [15]): the items whose class posterior has the highest entropy −Σ_c p_c log p_c."""
from __future__ import annotations

import numpy as np

from .base import Acquisition, AcquisitionInputs, top_k


def entropy(probs: np.ndarray) -> np.ndarray:
    """(S,) entropy of each row of class probabilities (0·log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)


class EntropyAcquisition(Acquisition):
    name = "entropy"
    requires = ("probs",)

    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return top_k(entropy(inputs.probs), k)
