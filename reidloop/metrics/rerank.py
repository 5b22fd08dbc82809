"""k-reciprocal re-ranking (Zhong et al., CVPR 2017, "Re-ranking Person Re-identification with k-reciprocal
Encoding"), numpy only, with a sparse encoding matrix instead of the reference code's dense N x N ones.

Over the joint set of N = Q + G images, with ``d`` the squared input distance divided by its row maximum:

* k-reciprocal neighbours: R(p, k) = {g in N(p, k) : p in N(g, k)}, N(p, k) the k+1 nearest neighbours of p
  (p included);
* robust expansion: R*(p, k1) = R(p, k1) U R(q, k1/2) for every q in R(p, k1) with
  |R(p, k1) & R(q, k1/2)| > 2/3 |R(q, k1/2)|;
* Jaccard distance with Gaussian-weighted encoding: V[p, g] = exp(-d(p, g)) / sum_{g' in R*} exp(-d(p, g'))
  for g in R*(p, k1), else 0; d_J(p, g) = 1 - sum_j min(V[p,j], V[g,j]) / sum_j max(V[p,j], V[g,j]);
* local query expansion: V[p] <- mean of V[g] over the k2 nearest neighbours g of p (before d_J);
* final distance: d*(p, g) = (1 - lambda) d_J(p, g) + lambda d(p, g).

This reproduces the authors' Python reference (also used by torchreid and fast-reid) up to float round-off,
including its ``round(k1/2)`` and squaring of the input (pass plain Euclidean distances). Neighbour ties are
broken by index. Because ``d`` is row-normalised, ``lambda_value=1`` returns ``q_g_dist**2`` divided by each
query's maximum squared distance to all Q + G images: a per-query monotone rescaling, same ranking as
``q_g_dist``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from reidloop.metrics.distance import as_numpy, pairwise_distance

_CHUNK_ELEMENTS = 1 << 23


class _JointDistance:
    """Row access to d = D**2 / rowmax(D**2) for the joint matrix D = [[q_q, q_g], [q_g^T, g_g]]."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_q = q_q.shape[0]
        self.n = self.num_q + g_g.shape[0]
        row_max = np.empty(self.n, dtype=np.float32)
        for s, e in self.chunks():
            row_max[s:e] = self.rows(s, e, normalized=False).max(axis=1, initial=0.0)
        self.row_max = np.where(row_max > 0, row_max, 1.0).astype(np.float32)

    def chunks(self) -> list[tuple[int, int]]:
        """Row ranges holding about ``_CHUNK_ELEMENTS`` cells each."""
        step = max(1, _CHUNK_ELEMENTS // self.n)
        return [(s, min(s + step, self.n)) for s in range(0, self.n, step)]

    def rows(self, start: int, stop: int, normalized: bool = True) -> np.ndarray:
        """Rows ``start:stop`` of the joint squared (and, by default, row-normalised) distance matrix."""
        q = self.num_q
        parts = []
        if start < q:
            e = min(stop, q)
            parts.append(np.concatenate([self.q_q[start:e], self.q_g[start:e]], axis=1))
        if stop > q:
            s = max(start, q) - q
            parts.append(np.concatenate([self.q_g[:, s:stop - q].T, self.g_g[s:stop - q]], axis=1))
        block = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
        np.square(block, out=block)
        if normalized:
            block /= self.row_max[start:stop, None]
        return block


def _stable_topk(block: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries of each row, sorted, ties broken by index."""
    if k >= block.shape[1]:
        return np.argsort(block, axis=1, kind="stable")
    kth = np.partition(block, k - 1, axis=1)[:, k - 1:k]
    below = block <= kth
    exact = below.sum(axis=1) == k  # no tie straddles the k-th position: the candidate set is the top-k
    out = np.empty((block.shape[0], k), dtype=np.int64)
    if exact.any():
        cand = np.nonzero(below[exact])[1].reshape(-1, k)  # ascending index within each row
        vals = np.take_along_axis(block[exact], cand, axis=1)
        out[exact] = np.take_along_axis(cand, np.argsort(vals, axis=1, kind="stable"), axis=1)
    if not exact.all():
        out[~exact] = np.argsort(block[~exact], axis=1, kind="stable")[:, :k]
    return out


def _reciprocal_sets(rank: np.ndarray, k: int) -> np.ndarray:
    """R(p, k) as an (N, k+1) array of indices padded with -1."""
    n = rank.shape[0]
    fwd = rank[:, :k + 1]
    out = np.full_like(fwd, -1)
    step = max(1, _CHUNK_ELEMENTS // (k + 1) ** 2)
    for s in range(0, n, step):
        e = min(s + step, n)
        back = rank[fwd[s:e], :k + 1]  # (rows, k+1, k+1): neighbours of each neighbour
        recip = (back == np.arange(s, e)[:, None, None]).any(axis=2)
        out[s:e] = np.where(recip, fwd[s:e], -1)
    return out


def _expanded_sets(r_full: np.ndarray, r_half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R*(p, k1) as flat (row, col) pairs, unique and sorted by (row, col)."""
    n, w = r_full.shape
    h = r_half.shape[1]
    rows_out, cols_out = [], []
    step = max(1, _CHUNK_ELEMENTS // (w * w * h))
    for s in range(0, n, step):
        e = min(s + step, n)
        full = r_full[s:e]
        cand = np.where(full[:, :, None] >= 0, r_half[full], -1)  # (rows, w, h): R(q, k1/2) per q
        member = (cand[..., None] == full[:, None, None, :]).any(axis=3) & (cand >= 0)
        accept = member.sum(axis=2) > (2.0 / 3.0) * (cand >= 0).sum(axis=2)
        merged = np.concatenate([full, np.where(accept[..., None], cand, -1).reshape(e - s, w * h)], axis=1)
        merged.sort(axis=1)
        keep = merged >= 0
        keep[:, 1:] &= merged[:, 1:] != merged[:, :-1]
        r, c = np.nonzero(keep)
        rows_out.append(r + s)
        cols_out.append(merged[r, c])
    return np.concatenate(rows_out), np.concatenate(cols_out)


def _gather(joint: _JointDistance, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """d[rows[i], cols[i]] for index pairs of the joint matrix."""
    q = joint.num_q
    out = np.empty(rows.shape[0], dtype=np.float32)
    rq, cq = rows < q, cols < q
    for sel, mat, r, c in (
        (rq & cq, joint.q_q, rows, cols),
        (rq & ~cq, joint.q_g, rows, cols - q),
        (~rq & cq, joint.q_g, cols, rows - q),  # q_g^T block
        (~rq & ~cq, joint.g_g, rows - q, cols - q),
    ):
        out[sel] = mat[r[sel], c[sel]]
    np.square(out, out=out)
    return out / joint.row_max[rows]


def _row_normalize(rows: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    sums = np.bincount(rows, weights=vals, minlength=n)
    return (vals / sums[rows]).astype(np.float32)


def _segment_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` over i."""
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(int(lengths.sum()))


def _query_expansion(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, nbrs: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local query expansion: V[p] <- mean of V[g] over g in ``nbrs[p]`` (sparse rows in CSR order)."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    k2 = nbrs.shape[1]
    src = nbrs.ravel()
    lengths = indptr[src + 1] - indptr[src]
    idx = _segment_indices(indptr[src], lengths)
    dst = np.repeat(np.repeat(np.arange(n), k2), lengths)
    keys, inverse = np.unique(dst * n + cols[idx], return_inverse=True)
    summed = np.bincount(inverse, weights=vals[idx], minlength=keys.shape[0])
    return keys // n, keys % n, (summed / k2).astype(np.float32)


def _jaccard_query_gallery(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, num_q: int,
                           n: int) -> np.ndarray:
    """Jaccard distance d_J for query rows against gallery rows of V, via an inverted index over V's columns."""
    gal = rows >= num_q
    g_rows, g_cols, g_vals = rows[gal] - num_q, cols[gal], vals[gal]
    order = np.argsort(g_cols, kind="stable")
    g_rows, g_vals = g_rows[order], g_vals[order]
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(g_cols, minlength=n))])
    num_g = n - num_q
    q_sel = rows < num_q
    q_rows, q_cols, q_vals = rows[q_sel], cols[q_sel], vals[q_sel]
    q_ptr = np.concatenate([[0], np.cumsum(np.bincount(q_rows, minlength=num_q))])
    out = np.empty((num_q, num_g), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        a, b = q_ptr[s], q_ptr[e]
        lengths = col_ptr[q_cols[a:b] + 1] - col_ptr[q_cols[a:b]]
        idx = _segment_indices(col_ptr[q_cols[a:b]], lengths)
        local_q = np.repeat(q_rows[a:b] - s, lengths)
        mins = np.minimum(np.repeat(q_vals[a:b], lengths), g_vals[idx])
        inter = np.bincount(local_q * num_g + g_rows[idx], weights=mins, minlength=(e - s) * num_g)
        inter = inter.reshape(e - s, num_g)
        out[s:e] = 1.0 - inter / (2.0 - inter)
    return out


def _check_dist(x: Any, name: str, shape: tuple[int, int]) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    step = max(1, _CHUNK_ELEMENTS // max(arr.shape[1], 1))  # row chunks: no boolean temporary of the whole input
    for s in range(0, arr.shape[0], step):
        block = arr[s:s + step]
        if not np.isfinite(block).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (block < 0).any():
            raise ValueError(f"{name} contains negative distances")
    return arr


def k_reciprocal_encoding(joint: _JointDistance, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every item's k-reciprocal encoding over ``joint`` (sparse rows, cols, vals): the k1-reciprocal set with
    robust expansion (k1/2), Gaussian weights of the distances, row-normalised, then local query expansion
    over ``k2`` neighbours (``k2=1``: none). Shared by re-ranking and the adaptation's Jaccard distance."""
    n = joint.n
    k_full = min(k1, n - 1)
    k_half = min(int(round(k1 / 2.0)), n - 1)
    k_top = min(max(k_full + 1, k2), n)
    initial_rank = np.empty((n, k_top), dtype=np.int64)
    for s, e in joint.chunks():
        initial_rank[s:e] = _stable_topk(joint.rows(s, e), k_top)
    rows, cols = _expanded_sets(_reciprocal_sets(initial_rank, k_full), _reciprocal_sets(initial_rank, k_half))
    vals = _row_normalize(rows, np.exp(-_gather(joint, rows, cols)), n)
    if k2 > 1:
        rows, cols, vals = _query_expansion(rows, cols, vals, initial_rank[:, :min(k2, n)], n)
    return rows, cols, vals


def k_reciprocal_rerank(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked (Q, G) float32 distance matrix d* (final distance) from Euclidean q-g, q-q and g-g distances.

    ``k1``: size of the k-reciprocal neighbourhood; ``k2``: neighbours averaged in local query
    expansion (``k2=1`` disables it); ``lambda_value`` in [0, 1] weighs the original distance.
    The q-q and g-g matrices are assumed symmetric with zero diagonal. Memory is O(N (k1 + k2 k1^2)) for the
    encoding plus O(Q G) for the output; the reference code's dense N x N matrices are never formed.
    """
    qg = as_numpy(q_g_dist, "q_g_dist")
    if qg.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D (num_query, num_gallery), got shape {qg.shape}")
    num_q, num_g = qg.shape
    qg = _check_dist(qg, "q_g_dist", (num_q, num_g))
    qq = _check_dist(q_q_dist, "q_q_dist", (num_q, num_q))
    gg = _check_dist(g_g_dist, "g_g_dist", (num_g, num_g))
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name} must be a positive int, got {k!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    if num_q == 0 or num_g == 0:
        return np.zeros((num_q, num_g), dtype=np.float32)

    joint = _JointDistance(qg, qq, gg)
    n = joint.n
    rows, cols, vals = k_reciprocal_encoding(joint, k1, k2)
    jaccard = _jaccard_query_gallery(rows, cols, vals, num_q, n)

    # d* = (1 - λ) J + λ d, in place in J and one chunk of query rows at a time: the output is the only
    # Q x G array held (the same float32 operations, in the same order, as the expression written out)
    jaccard *= np.float32(1.0 - lambda_value)
    step = max(1, _CHUNK_ELEMENTS // n)
    for s in range(0, num_q, step):
        e = min(s + step, num_q)
        original = joint.rows(s, e)[:, num_q:]
        original *= np.float32(lambda_value)
        jaccard[s:e] += original
    return jaccard


def rerank_from_features(qf: Any, gf: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """:func:`k_reciprocal_rerank` on Euclidean distances between query ``qf`` and gallery ``gf`` features."""
    qf = as_numpy(qf, "qf").astype(np.float32, copy=False)
    gf = as_numpy(gf, "gf").astype(np.float32, copy=False)
    return k_reciprocal_rerank(pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf),
                               k1=k1, k2=k2, lambda_value=lambda_value)
