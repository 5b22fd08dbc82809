"""DRAL state (§3.2.2): similarity graph over {q, g1..g_ns} and its κ-reciprocal sparsification.

Index 0 is the query q, indices 1..ns the candidates g1..g_ns (nearest-first).
"""
from __future__ import annotations

import numpy as np

from .metric import Metric


def _square(M: np.ndarray, name: str) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 2:
        raise ValueError(f"{name} must be a square (n, n) matrix with n >= 2, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return M


def build_distance_matrix(features_q_and_candidates: np.ndarray, metric: Metric) -> np.ndarray:
    """The (ns+1, ns+1) distances d of Eq. 4 between the rows [q, g1..g_ns]; symmetric, zero diagonal."""
    F = np.asarray(features_q_and_candidates, dtype=np.float64)
    D = _square(metric.pairwise(F, F), "metric.pairwise(features, features)")
    D = (D + D.T) / 2.0
    np.fill_diagonal(D, 0.0)
    return D


def similarity_from_distance(D: np.ndarray) -> np.ndarray:
    """Eq. 4: ``Sim(i, j) = 1 − d(i, j) / max d`` over the set (max over all pairs), 0 on the diagonal.

    If every distance is 0 (all nodes coincide) every off-diagonal similarity is 1.
    """
    D = _square(D, "distance matrix")
    if (D < 0).any():
        raise ValueError(f"distance matrix has negative entries (min {D.min()})")
    if not np.allclose(D, D.T):
        raise ValueError("distance matrix is not symmetric")
    dmax = D.max()
    S = 1.0 - D / dmax if dmax > 0 else np.ones_like(D)
    np.fill_diagonal(S, 0.0)
    return S


def kappa_reciprocal(S: np.ndarray, kappa: int) -> np.ndarray:
    """Eq. 5: keep ``Sim(i, j)`` iff ``j ∈ N(i, κ)`` and ``i ∈ N(j, κ)``, else 0.

    ``N(i, κ)`` is the κ most similar *other* nodes of i; equal similarities are
    ranked by lower index first, so the result is deterministic.  The result is
    symmetric whenever ``S`` is (``DralConfig.kappa`` → ``kappa``).
    """
    S = _square(S, "similarity matrix")
    n = S.shape[0]
    if not 1 <= kappa <= n - 1:
        raise ValueError(f"kappa must be in [1, {n - 1}] for a {n}x{n} similarity matrix, got {kappa}")
    key = -S
    np.fill_diagonal(key, np.inf)  # a node is never its own neighbour
    order = np.argsort(key, axis=1, kind="stable")[:, :kappa]
    in_knn = np.zeros((n, n), dtype=bool)
    np.put_along_axis(in_knn, order, True, axis=1)
    return np.where(in_knn & in_knn.T, S, 0.0)
