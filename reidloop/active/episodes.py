"""The round-level pieces of Algorithm 1 around the episode engine (``engine.run_round``).

``round_slices`` cuts the query order into rounds, ``nearest_candidates_all`` gives each query its ns
nearest pool images under the round's metric, ``split_pairs`` splits the answers into same / different.
"""
from __future__ import annotations

import math

import numpy as np

from ..dral.metric import Metric


def round_slices(n_queries: int, every: float) -> list[slice]:
    """Split the query order into rounds of ``every`` × n_queries (the last one takes the rest)."""
    rounds = max(1, math.ceil(round(1.0 / every, 9)))
    bounds = [round(i * n_queries / rounds) for i in range(rounds + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(rounds)]


def nearest_candidates_all(features: np.ndarray, metric: Metric, queries: np.ndarray, ns: int,
                           chunk: int = 512) -> np.ndarray:
    """(len(queries), ns) pool indices of each query's ns nearest other pool images, nearest first."""
    n = len(features)
    if ns >= n:
        raise ValueError(f"dral.ns={ns} candidates need a pool of more than {ns} images, got {n}")
    out = np.empty((len(queries), ns), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        D = metric.pairwise(features[q], features)
        D[np.arange(len(q)), q] = np.inf
        part = np.argpartition(D, ns, axis=1)[:, :ns]
        order = np.argsort(np.take_along_axis(D, part, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, 1)
    return out


def split_pairs(queries: np.ndarray, candidates: np.ndarray, answers: np.ndarray):
    """(positive pairs, negative pairs), each (P, 2), of parallel query / candidate / ±1 answer arrays."""
    pairs = np.stack([queries, candidates], 1) if len(queries) else np.empty((0, 2), dtype=np.int64)
    return pairs[answers > 0], pairs[answers < 0]
