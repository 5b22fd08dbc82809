"""Mahalanobis distance d (Eq. 4, 9): KISSME fitted on the pairs collected so far; Euclidean before there are enough.

DRAL computes the state similarities (Eq. 4) and the uncertainty reward (Eq. 9)
from a Mahalanobis distance ``d``.  We learn it with KISSME (Köstinger et al.,
"Large Scale Metric Learning from Equivalence Constraints", CVPR 2012) from the
pairs the annotator has labelled so far::

    M = Σ_S⁻¹ − Σ_D⁻¹,   Σ_S = mean over similar pairs of (x−y)(x−y)ᵀ,
                          Σ_D = same over dissimilar pairs,
    d(x, y) = sqrt((x−y)ᵀ M (x−y)).

Choices made here (the paper does not specify them):

* **PCA subspace.**  Re-ID features are 2048-D while a DRAL run starts with a
  handful of pairs, so Σ_S, Σ_D would be hopelessly rank-deficient in the full
  space.  As Köstinger et al. do, M is learnt in a PCA subspace (PCA of all the
  features passed to :meth:`KissmeMetric.fit`, which may be unlabelled) of
  dimension ``k = min(d, pca_dim, n_features − 1, min(|S|, |D|))``:
  at most ``pca_dim`` (64 by default), never more than the data can span, and
  never more than the number of difference vectors behind the smaller of the
  two covariances.
* **Shrinkage.**  Each covariance is shrunk towards a scaled identity,
  ``Σ ← (1 − reg)·Σ + reg·(tr Σ / k)·I``, so both inverses exist with few pairs.
* **PSD projection.**  M is projected onto the PSD cone by clipping its negative
  eigenvalues to zero, so ``d`` is a (pseudo-)metric.

:func:`fit_metric` returns :class:`EuclideanMetric` at the DRAL start (fewer
than ``min_pairs`` similar or dissimilar pairs: no labels yet) and when the
fitted M has no positive eigenvalue (every direction separates similar pairs
less than dissimilar ones, so KISSME carries no usable information).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np


class Metric(Protocol):
    """A distance between feature rows."""

    def pairwise(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Distances (len(X), len(Y)) between the rows of ``X`` and ``Y``."""
        ...


def _as_features(X: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) feature array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _euclidean(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    sq = (X * X).sum(1)[:, None] + (Y * Y).sum(1)[None, :] - 2.0 * (X @ Y.T)
    return np.sqrt(np.maximum(sq, 0.0))


class EuclideanMetric:
    """Plain Euclidean distance (the DRAL start, before any pair is labelled)."""

    def pairwise(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        X, Y = _as_features(X, "X"), _as_features(Y, "Y")
        if X.shape[1] != Y.shape[1]:
            raise ValueError(f"X and Y feature dimensions differ: {X.shape[1]} vs {Y.shape[1]}")
        return _euclidean(X, Y)


def _pairs(pairs: np.ndarray, n: int, name: str) -> np.ndarray:
    P = np.asarray(pairs)
    if P.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if P.ndim != 2 or P.shape[1] != 2 or not np.issubdtype(P.dtype, np.integer):
        raise ValueError(f"{name} must be an integer (m, 2) array of feature-row indices, got {P.dtype} {P.shape}")
    if P.min() < 0 or P.max() >= n:
        raise ValueError(f"{name} has indices outside [0, {n}): min {P.min()}, max {P.max()}")
    return P.astype(np.int64)


def _pca_basis(X: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` principal directions of ``X`` as a (d, k) orthonormal basis."""
    Xc = X - X.mean(0)
    n, d = Xc.shape
    if n >= d:
        _, vecs = np.linalg.eigh(Xc.T @ Xc)
        return vecs[:, ::-1][:, :k]
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    return Vt[:k].T


def _shrunk_cov(diffs: np.ndarray, reg: float) -> np.ndarray:
    k = diffs.shape[1]
    cov = diffs.T @ diffs / len(diffs)
    scale = np.trace(cov) / k
    return (1.0 - reg) * cov + reg * (scale if scale > 0 else 1.0) * np.eye(k)


@dataclass(frozen=True)
class KissmeMetric:
    """KISSME Mahalanobis metric ``d(x, y) = sqrt((x−y)ᵀ P M Pᵀ (x−y))``.

    ``projection`` P (d, k) is the PCA basis, ``matrix`` M (k, k) the PSD KISSME
    matrix in that subspace.  Build it with :meth:`fit`.
    """

    projection: np.ndarray
    matrix: np.ndarray
    _transform: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vals, vecs = np.linalg.eigh(self.matrix)
        L = self.projection @ (vecs * np.sqrt(np.clip(vals, 0.0, None)))  # P M Pᵀ = L Lᵀ
        object.__setattr__(self, "_transform", L)

    @property
    def rank(self) -> int:
        """Number of strictly positive eigenvalues of M (0: the metric is all-zero)."""
        vals = np.linalg.eigvalsh(self.matrix)
        return int((vals > 1e-12 * max(vals.max(), 1.0)).sum())

    @classmethod
    def fit(cls, features: np.ndarray, pos_pairs: np.ndarray, neg_pairs: np.ndarray,
            reg: float = 0.1, pca_dim: int = 64) -> "KissmeMetric":
        """Fit M on similar pairs ``pos_pairs`` and dissimilar pairs ``neg_pairs``.

        ``features`` (n, d); pairs are (m, 2) integer arrays of row indices into it.
        ``reg`` in [0, 1] is the shrinkage weight, ``pca_dim`` the subspace cap
        (see the module docstring for the subspace dimension).
        """
        X = _as_features(features, "features")
        n, d = X.shape
        pos, neg = _pairs(pos_pairs, n, "pos_pairs"), _pairs(neg_pairs, n, "neg_pairs")
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError(f"KISSME needs similar and dissimilar pairs, got {len(pos)} and {len(neg)}")
        if not 0.0 <= reg <= 1.0:
            raise ValueError(f"reg must be in [0, 1], got {reg}")
        if pca_dim < 1:
            raise ValueError(f"pca_dim must be >= 1, got {pca_dim}")
        k = max(1, min(d, pca_dim, n - 1, len(pos), len(neg)))
        P = _pca_basis(X, k)
        Z = X @ P
        cov_s = _shrunk_cov(Z[pos[:, 0]] - Z[pos[:, 1]], reg)
        cov_d = _shrunk_cov(Z[neg[:, 0]] - Z[neg[:, 1]], reg)
        M = np.linalg.inv(cov_s) - np.linalg.inv(cov_d)
        vals, vecs = np.linalg.eigh((M + M.T) / 2.0)
        M_psd = (vecs * np.clip(vals, 0.0, None)) @ vecs.T
        return cls(projection=P, matrix=(M_psd + M_psd.T) / 2.0)

    def pairwise(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        X, Y = _as_features(X, "X"), _as_features(Y, "Y")
        d = self.projection.shape[0]
        if X.shape[1] != d or Y.shape[1] != d:
            raise ValueError(f"features must have dimension {d} (the fitted one), got {X.shape[1]} and {Y.shape[1]}")
        return _euclidean(X @ self._transform, Y @ self._transform)


def fit_metric(kind: Literal["kissme", "euclidean"], features: np.ndarray, pos_pairs: np.ndarray,
               neg_pairs: np.ndarray, min_pairs: int = 10, reg: float = 0.1, pca_dim: int = 64) -> Metric:
    """The metric ``d`` of Eq. 4 and 9 (``DralConfig.metric`` → ``kind``).

    KISSME once at least ``min_pairs`` similar and ``min_pairs`` dissimilar pairs
    exist and the fit is non-degenerate; Euclidean otherwise.
    """
    if kind == "euclidean":
        return EuclideanMetric()
    if kind != "kissme":
        raise ValueError(f"metric kind must be 'kissme' or 'euclidean', got {kind!r}")
    if min_pairs < 1:
        raise ValueError(f"min_pairs must be >= 1, got {min_pairs}")
    if min(len(np.asarray(pos_pairs)), len(np.asarray(neg_pairs))) < min_pairs:
        return EuclideanMetric()
    metric = KissmeMetric.fit(features, pos_pairs, neg_pairs, reg=reg, pca_dim=pca_dim)
    return metric if metric.rank > 0 else EuclideanMetric()
