"""CMC, mAP and mINP under the Market-1501 protocol, vectorised over queries.

Protocol (Zheng et al., ICCV 2015; the DRAL paper's "Evaluation Protocols" use the same Rank-k / mAP):

* for each query, gallery images with the query's pid AND camid are removed (same view, trivial match);
* gallery images with pid ``-1`` are junk and removed for every query (Market-1501 distractors keep their
  own pid, e.g. 0, and count as ordinary negatives);
* a query with no remaining true match is skipped and counted out of ``num_valid_queries``.

With ``r_1 < ... < r_M`` the 1-based ranks of the M true matches in the filtered ranking,

* CMC(k)  = fraction of valid queries with ``r_1 <= k``;
* AP      = (1/M) * sum_m m / r_m  (mean precision at each hit, as torchreid / fast-reid; the official
  MATLAB code interpolates precision trapezoidally between hits, which differs slightly);
* INP     = M / r_M  (Ye et al., TPAMI 2021, "Deep Learning for Person Re-identification", mINP).

Ties in the distance matrix are broken by gallery index (stable argsort), so results are deterministic.

Speed: sorting every row dominates. For float32 (and float16) distances each cell becomes one int64 key, the
float's order-preserving bits above its gallery index; the keys are unique, so numpy's SIMD quicksort orders
them exactly as a stable argsort would (ties by gallery index), several times faster. Float64 distances keep
the stable argsort (packing them into 32 bits would merge near-ties).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from reidloop.metrics.distance import _is_torch, as_numpy

JUNK_PID = -1
_CHUNK_ELEMENTS = 1 << 23  # ~8M (query, gallery) cells per chunk


def _as_ids(x: Any, name: str, length: int) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length} to match the distance matrix")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class RankResult:
    """Evaluation result; ``cmc[k-1]`` is the Rank-k matching rate over valid queries."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int

    def rank(self, k: int) -> float:
        """Rank-k matching rate (1-based ``k``, at most ``len(cmc)``)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank k must be in [1, {len(self.cmc)}], got {k}")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float]:
        """``rank1``/``rank5``/``rank10`` (those within ``max_rank``), ``mAP`` and ``mINP`` as plain floats."""
        out = {f"rank{k}": self.rank(k) for k in (1, 5, 10) if k <= len(self.cmc)}
        out["mAP"] = float(self.mAP)
        out["mINP"] = float(self.mINP)
        return out


def _ranked_order(dist: np.ndarray) -> np.ndarray:
    """Each row's gallery indices by increasing distance, ties by index (= ``argsort(kind="stable")``)."""
    if dist.dtype not in (np.float32, np.float16) or dist.shape[1] >= 1 << 31:
        return np.argsort(dist, axis=1, kind="stable")
    bits = (dist.astype(np.float32) + np.float32(0.0)).view(np.int32).astype(np.int64)  # (+0.0: -0.0 == 0.0)
    bits ^= (bits >> 31) & 0x7FFFFFFF  # negative floats: larger magnitude, smaller key
    keys = (bits << 32) | np.arange(dist.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    return keys & 0xFFFFFFFF


def _ranked_order_torch(block: Any) -> np.ndarray:
    """:func:`_ranked_order` computed by torch on the tensor's own device (a CUDA distance matrix is sorted
    where it lies; only the order, as int32, comes back to the host)."""
    import torch

    if block.dtype in (torch.float32, torch.float16, torch.bfloat16):
        bits = (block.float() + 0.0).view(torch.int32).to(torch.int64)
        bits ^= (bits >> 31) & 0x7FFFFFFF
        keys = (bits << 32) | torch.arange(block.shape[1], device=block.device, dtype=torch.int64)
        order = torch.sort(keys, dim=1).values & 0xFFFFFFFF
    else:
        order = torch.argsort(block, dim=1, stable=True)
    return order.to(torch.int32).cpu().numpy()


def _chunk_stats(order: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
                 g_cams: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query of one chunk (``order``: each row's gallery indices, nearest first): number of true matches
    M, first-hit rank r_1, AP and INP (0 where M = 0).

    Only the argsort and the pid comparison touch all (query, gallery) cells; matches and removed images are
    few per query, so ranks among kept images are computed on their sparse (row, column) positions.
    """
    n_q, n_g = order.shape
    ranked_pids = g_pids[order]
    mr, mc = np.nonzero(ranked_pids == q_pids[:, None])  # row-major: each query's matches in ranked order
    same_cam = g_cams[order[mr, mc]] == q_cams[mr]
    removed = mr[same_cam] * n_g + mc[same_cam]  # sorted (row-major), unique; junk columns are gone already
    keep = ~same_cam & (q_pids[mr] != JUNK_PID)
    hr, hc = mr[keep], mc[keep]
    # 1-based rank among kept images = position + 1 - removed images ranked before it in the same row.
    rank = hc + 1 - (np.searchsorted(removed, hr * n_g + hc) - np.searchsorted(removed, hr * n_g))
    n_hits = np.bincount(hr, minlength=n_q)
    first_idx = np.cumsum(n_hits) - n_hits  # index into hr of each query's first hit
    m = np.arange(hr.shape[0]) - first_idx[hr] + 1  # hit number m of each hit within its query
    ap = np.bincount(hr, weights=m / rank, minlength=n_q) / np.maximum(n_hits, 1)
    has = n_hits > 0
    first = np.zeros(n_q, dtype=np.int64)
    last = np.zeros(n_q, dtype=np.int64)
    first[has] = rank[first_idx[has]]
    last[has] = rank[first_idx[has] + n_hits[has] - 1]
    inp = n_hits / np.maximum(last, 1)
    return n_hits, first, ap, inp


def evaluate_rank(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                  max_rank: int = 50, threads: int | None = None) -> RankResult:
    """Market-1501 CMC / mAP / mINP for a (num_query, num_gallery) distance matrix (smaller = more similar).

    ``cmc`` always has length ``max_rank``; entries past the number of kept gallery images equal the last
    reachable value (every valid query has its first hit by then). Raises ``ValueError`` when no query has a
    valid match. Works in query chunks of ~8M cells, so memory stays bounded for large galleries, on
    ``threads`` threads (None: one per CPU this process may use; the result does not depend on it).
    """
    if _is_torch(distmat):  # ranked by torch where it lies (CUDA: on the GPU); the rest is the same
        import torch

        dist, rank_of = distmat.detach(), _ranked_order_torch
        if dist.is_complex() or dist.dtype == torch.bool:
            raise TypeError(f"distmat must be numeric, got dtype {dist.dtype}")
        if dist.ndim == 2 and dist.is_floating_point() and bool(dist.isnan().any()):
            raise ValueError("distmat contains NaN")
    else:
        dist, rank_of = as_numpy(distmat, "distmat"), _ranked_order
        if dist.ndim == 2 and not np.issubdtype(dist.dtype, np.number):
            raise TypeError(f"distmat must be numeric, got dtype {dist.dtype}")
        if dist.ndim == 2 and np.isnan(dist).any():
            raise ValueError("distmat contains NaN")
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    q_pids, q_cams = _as_ids(q_pids, "q_pids", num_q), _as_ids(q_camids, "q_camids", num_q)
    g_pids, g_cams = _as_ids(g_pids, "g_pids", num_g), _as_ids(g_camids, "g_camids", num_g)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}")

    kept = None
    if (g_pids == JUNK_PID).any():  # junk is removed for every query: its columns go, chunk by chunk
        kept = np.flatnonzero(g_pids != JUNK_PID)
        g_pids, g_cams, num_g = g_pids[kept], g_cams[kept], len(kept)
        if rank_of is _ranked_order_torch:
            kept = torch.as_tensor(kept, device=dist.device)
    n_hits = np.zeros(num_q, dtype=np.int64)
    first = np.zeros(num_q, dtype=np.int64)
    ap = np.zeros(num_q)
    inp = np.zeros(num_q)
    step = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    step = max(1, min(step, -(-num_q // threads)))  # at least one chunk per thread

    def chunk(s: int) -> None:
        e = min(s + step, num_q)
        block = dist[s:e] if kept is None else dist[s:e][:, kept]
        n_hits[s:e], first[s:e], ap[s:e], inp[s:e] = _chunk_stats(rank_of(block), q_pids[s:e], q_cams[s:e],
                                                                   g_pids, g_cams)

    starts = range(0, num_q, step)
    if threads == 1 or len(starts) == 1:
        for s in starts:
            chunk(s)
    else:  # the sort and the gathers release the GIL: chunks run side by side, each thread its own
        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(chunk, starts))
    ok = n_hits > 0
    num_valid = int(ok.sum())
    if num_valid == 0:
        raise ValueError(
            f"no valid query: none of the {num_q} queries has a gallery match with the same pid from another "
            "camera (check pids/camids, and that the gallery is not only junk pid -1)"
        )
    counts = np.bincount(first[ok] - 1, minlength=max_rank)[:max_rank]
    cmc = np.cumsum(counts) / num_valid
    return RankResult(cmc=cmc, mAP=float(ap[ok].mean()), mINP=float(inp[ok].mean()), num_valid_queries=num_valid)
