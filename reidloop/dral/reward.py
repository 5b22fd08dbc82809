"""DRAL uncertainty reward (§3.2.3, Eq. 9).

``R = [m + y·(max_{x∈Xp} d(x, g_k) − min_{x∈Xn} d(x, g_k))]_+``, a hard-triplet
margin: a positive far from the known positives / close to the known negatives,
or a negative close to the positives / far from the negatives, is uncertain and
earns a high reward.  Choices made here (not fixed by the paper):

1. ``Xp``/``Xn`` are the positives/negatives collected for this query BEFORE this
   answer, and the query itself always counts as a positive, so ``Xp`` is never empty.
2. Distances are divided by the largest distance of the (ns+1) set — the same
   normalisation as Eq. 4 — so they lie in [0, 1] and ``m = 0.2`` has the same
   meaning whatever the feature scale.
3. With no negatives yet, ``min over Xn`` is 1.0, the largest normalised distance.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def uncertainty_reward(d_to_gk_from_pos: np.ndarray, d_to_gk_from_neg: np.ndarray, y: int, margin: float) -> float:
    """Eq. 9 from normalised distances: positives→g_k (non-empty) and negatives→g_k (may be empty)."""
    dp = np.asarray(d_to_gk_from_pos, dtype=np.float64).ravel()
    dn = np.asarray(d_to_gk_from_neg, dtype=np.float64).ravel()
    if dp.size == 0:
        raise ValueError("d_to_gk_from_pos is empty: the query itself must count as a positive")
    if y not in (1, -1):
        raise ValueError(f"answer y must be +1 or -1, got {y!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    hardest_neg = dn.min() if dn.size else 1.0
    return float(max(margin + y * (dp.max() - hardest_neg), 0.0))


def query_reward(D: np.ndarray, k: int, y: int, positives: Sequence[int], negatives: Sequence[int],
                 margin: float) -> float:
    """Eq. 9 over index sets of the (ns+1, ns+1) distance matrix ``D`` (0 = query).

    ``k`` is g_k's matrix index; ``positives``/``negatives`` are the matrix indices
    of candidates answered +1/−1 before this answer (the query 0 is added to the
    positives); ``DralConfig.margin`` → ``margin``.
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"D must be a square (ns+1, ns+1) matrix, got shape {D.shape}")
    n = D.shape[0]
    pos = np.unique(np.concatenate([[0], np.asarray(positives, dtype=np.int64)]))
    neg = np.asarray(negatives, dtype=np.int64)
    for name, idx in (("k", np.array([k])), ("positives", pos), ("negatives", neg)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name} has matrix indices outside [0, {n}): {idx.tolist()}")
    if k == 0 or k in pos or k in neg:
        raise ValueError(f"k={k} must be an unanswered candidate, not the query or an answered one")
    dmax = D.max()
    Dn = D / dmax if dmax > 0 else np.zeros_like(D)
    return uncertainty_reward(Dn[pos, k], Dn[neg, k], y, margin)
