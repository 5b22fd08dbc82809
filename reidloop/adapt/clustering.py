"""Pseudo-labels for unsupervised adaptation: k-reciprocal Jaccard distance, DBSCAN, answer constraints.

Clustering-based unsupervised Re-ID (cluster-contrast; CAP, Wang et al. AAAI 2021) re-clusters the
unlabelled pool every epoch: the k-reciprocal Jaccard distance among the images (Zhong et al. 2017),
DBSCAN on it as a precomputed metric, outliers (-1) dropped. Here the annotator's answers join in as
hard constraints: "same" pairs (must-link) end in one cluster, "different" pairs (cannot-link) in two.

DBSCAN is scikit-learn's (``sklearn.cluster.DBSCAN``, ``metric="precomputed"``): a point is core when at
least ``min_samples`` points (itself included) lie within ``dist <= eps``; clusters are the connected
components of core points; a non-core point within ``eps`` of a core point is a border point and joins
the first cluster that reaches it in sklearn's expansion order (not necessarily its nearest core point's);
every other point is an outlier.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.distance import as_numpy, pairwise_distance
from ..metrics.rerank import _jaccard_query_gallery, _JointDistance, k_reciprocal_encoding
from ..unionfind import UnionFind


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def jaccard_distance(features: np.ndarray, k1: int = 20, k2: int = 6) -> np.ndarray:
    """(N, N) float32 k-reciprocal Jaccard distance among ``features`` (N, D): symmetric, zero diagonal, in [0, 1].

    The encoding of :func:`reidloop.metrics.rerank.k_reciprocal_rerank` (squared Euclidean distance divided
    by its row maximum, k-reciprocal sets with robust expansion, Gaussian weights, local query expansion over
    ``k2`` neighbours; ``k2=1`` disables it) over the set against itself, Jaccard term only (lambda = 0).
    The distance is invariant to a global scale of the features.
    """
    f = as_numpy(features, "features")
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.number):
        raise ValueError(f"features must be a numeric (N, D) array, got {f.dtype} {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    k1, k2 = _positive_int(k1, "k1"), _positive_int(k2, "k2")
    n = f.shape[0]
    if n < 2:
        return np.zeros((n, n), dtype=np.float32)
    f = f.astype(np.float32, copy=False)
    dist = pairwise_distance(f, f)
    np.fill_diagonal(dist, 0.0)
    # the set as the "query" part of the joint matrix, with an empty gallery: the joint set is the set itself
    joint = _JointDistance(np.zeros((n, 0), np.float32), dist, np.zeros((0, 0), np.float32))
    rows, cols, vals = k_reciprocal_encoding(joint, k1, k2)
    # every row against every row: the encoding twice, the second copy playing the gallery
    jac = _jaccard_query_gallery(np.concatenate([rows, rows + n]), np.concatenate([cols, cols]),
                                 np.concatenate([vals, vals]), n, 2 * n)
    jac = (jac + jac.T) / 2.0
    np.fill_diagonal(jac, 0.0)
    return np.clip(jac, 0.0, 1.0).astype(np.float32, copy=False)


def auto_eps(dist: np.ndarray, rho: float) -> float:
    """DBSCAN's radius from the distances themselves (Song et al., "Unsupervised domain adaptive
    re-identification: theory and practice", 2020: rho 1.6e-3): the mean of the smallest positive distances,
    as many as ``rho`` of the N(N-1)/2 pairs (at least one). A ``rho`` a little above the share of
    same-person pairs (about (images per person - 1) / N: 1.2e-3 on Market-1501, 1.5e-3 on a CUHK01 pool)
    covers most same-person distances, and the radius follows the features as adaptation sharpens them."""
    d = as_numpy(dist, "dist")
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise ValueError(f"dist must be an (N, N) matrix with N >= 2, got {d.shape}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.number)) or not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    pairs = d[np.triu_indices(d.shape[0], 1)]
    # zero distances are images with the same k-reciprocal neighbours (common with few images per person
    # and a sharpened model): they would pull the radius to 0, where DBSCAN groups only exact duplicates
    upper = pairs[pairs > 0]
    if not upper.size:
        raise ValueError(f"every one of the {pairs.size} pairwise distances is 0: no radius to derive (set eps)")
    k = max(1, int(np.ceil(rho * pairs.size)))
    return float(np.partition(upper, min(k, upper.size) - 1)[:k].mean())


def radius(dist: np.ndarray, eps: float, eps_rho: float | None = None) -> float:
    """DBSCAN's radius for ``dist``: :func:`auto_eps` with ``eps_rho`` when it is set, else ``eps``."""
    return auto_eps(dist, eps_rho) if eps_rho else eps


def _check_pairs(pairs: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer (P, 2) array of index pairs, got {arr.dtype} {arr.shape}")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        raise ValueError(f"{name} has index {int(arr[bad][0])} outside [0, {n})")
    return arr.astype(np.int64)


def dbscan(dist: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN labels (N,) int64 on a precomputed distance matrix (see the module docstring); -1 outliers.

    ``sklearn.cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")``: clusters 0..C-1 in
    the order sklearn finds them. :func:`cluster` checks the arguments (with its own messages); this does not."""
    from sklearn.cluster import DBSCAN  # imported here: about 1.5 s that importing reidloop.strategies skips

    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist).astype(np.int64)


def cluster(dist: np.ndarray, eps: float, min_samples: int = 4, must_link: Any = (),
            cannot_link: Any = ()) -> np.ndarray:
    """Labels (N,) from DBSCAN on ``dist`` (N, N) under answer constraints; -1 outliers, clusters 0..C-1.

    ``must_link`` (P, 2) index pairs end in one cluster: DBSCAN clusters linked by a pair merge, an outlier
    linked to a cluster joins it, linked outliers form a cluster. ``cannot_link`` (Q, 2) pairs end in
    different clusters: a merged cluster holding both ends of a pair is split. Its must-link groups (the
    members joined by ``must_link``; others alone) holding a cannot-link end are the seeds: each in turn
    joins the part at the least mean distance that it has no cannot-link with, or starts a new part; every
    other group then joins the part whose seeds are at the least mean distance (ties: the first part).
    Clusters are numbered by their smallest member. ValueError when a must-link chain joins a cannot-link pair.
    """
    d = as_numpy(dist, "dist")
    if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.issubdtype(d.dtype, np.number):
        raise ValueError(f"dist must be a numeric (N, N) matrix, got {d.dtype} {d.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("dist must hold finite, non-negative distances")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)) or not 0 < eps < np.inf:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    min_samples = _positive_int(min_samples, "min_samples")
    n = d.shape[0]
    ml, cl = _check_pairs(must_link, "must_link", n), _check_pairs(cannot_link, "cannot_link", n)
    hard = UnionFind(n, ml.tolist())  # the must-link groups
    for a, b in cl.tolist():
        if a == b:
            raise ValueError(f"cannot_link pair ({a}, {b}) is one item")
        if hard.find(a) == hard.find(b):
            raise ValueError(f"cannot_link pair ({a}, {b}) is joined by a chain of must_link pairs")

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    labels = dbscan(d, float(eps), min_samples)
    comp = UnionFind(n, ml.tolist())  # DBSCAN clusters merged through must-links
    first = np.full(int(labels.max()) + 1, n, dtype=np.int64)  # each DBSCAN cluster's smallest member
    np.minimum.at(first, labels[labels >= 0], np.flatnonzero(labels >= 0))
    for m in np.flatnonzero(labels >= 0).tolist():
        comp.union(int(first[labels[m]]), m)
    roots, hard_roots = comp.roots(), hard.roots()
    clustered = (labels >= 0) | (np.bincount(hard_roots, minlength=n)[hard_roots] > 1)
    out = np.where(clustered, roots, -1)
    violated = {roots[a] for a, b in cl.tolist() if clustered[a] and roots[a] == roots[b]}
    for root in sorted(violated):
        for part in _split(d, np.flatnonzero(out == root), hard_roots, cl):
            out[part] = part.min()
    _, out[out >= 0] = np.unique(out[out >= 0], return_inverse=True)  # roots → 0..C-1, ordered by smallest member
    return out


def _split(d: np.ndarray, members: np.ndarray, hard_roots: np.ndarray, cl: np.ndarray) -> list[np.ndarray]:
    """Partition ``members`` so that no part holds a cannot-link pair (see :func:`cluster`)."""
    inside = np.isin(cl, members).all(axis=1)
    conflicts: dict[int, set[int]] = {}  # must-link group root -> the group roots it has a cannot-link with
    for a, b in hard_roots[cl[inside]].tolist():
        conflicts.setdefault(a, set()).add(b)
        conflicts.setdefault(b, set()).add(a)
    groups: dict[int, list[int]] = {}
    for m in members.tolist():
        groups.setdefault(int(hard_roots[m]), []).append(m)
    parts: list[set[int]] = []  # must-link group roots per part
    sums: list[np.ndarray] = []  # per part: summed distance of every item to the part's seed members
    sizes: list[int] = []
    for g in sorted(conflicts):  # the seeds: groups holding a cannot-link end
        free = [p for p, roots in enumerate(parts) if conflicts[g].isdisjoint(roots)]
        if free:  # the part at the least mean distance (ties: the first)
            best = free[int(np.argmin([sums[p][groups[g]].mean() / sizes[p] for p in free]))]
        else:  # in conflict with every part: a new one
            best = len(parts)
            parts.append(set())
            sums.append(np.zeros(d.shape[0]))
            sizes.append(0)
        parts[best].add(g)
        sums[best] += d[:, groups[g]].sum(axis=1)
        sizes[best] += len(groups[g])
    seeded = np.stack([sums[p] / sizes[p] for p in range(len(parts))])  # (parts, N) mean distance to seeds
    for g in sorted(set(groups) - set(conflicts)):  # every other group to its nearest part (ties: the first)
        parts[int(np.argmin(seeded[:, groups[g]].mean(axis=1)))].add(g)
    return [np.array(sorted(m for r in roots for m in groups[r])) for roots in parts]


def proxies(labels: np.ndarray, cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-aware proxies (CAP): one per (cluster, camera) pair present among the clustered samples.

    Returns ``(proxy_of_sample (N,), proxy_cluster (K,), proxy_camera (K,))``, int64; outliers (-1) get
    proxy -1. Proxies are ordered by (cluster, camera).
    """
    lab, cam = np.asarray(labels), np.asarray(cameras)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer (N,) array, got {lab.dtype} {lab.shape}")
    if cam.shape != lab.shape or not np.issubdtype(cam.dtype, np.integer):
        raise ValueError(f"cameras must be an integer array of shape {lab.shape}, got {cam.dtype} {cam.shape}")
    if (lab < -1).any():
        raise ValueError(f"labels must be >= -1 (-1: outlier), got {int(lab.min())}")
    keep = lab >= 0
    pairs, inverse = np.unique(np.stack([lab[keep], cam[keep]], axis=1).reshape(-1, 2), axis=0,
                               return_inverse=True)
    of_sample = np.full(lab.shape, -1, dtype=np.int64)
    of_sample[keep] = inverse.ravel()
    return of_sample, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
