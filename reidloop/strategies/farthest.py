"""Farthest: ask the query's farthest open candidates first (the mirror of :mod:`.nearest`).

Among the ns nearest candidates of a query, the ones at the far end of the list are the least
likely matches; asking them first mostly collects "different" answers. A bound for "how near to
ask": a strategy should beat it as clearly as nearest-first does. Not in the paper's list of
strategies.
"""
from __future__ import annotations

import numpy as np

from .base import Strategy, masked_argmax


class FarthestStrategy(Strategy):
    name = "farthest"

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        return masked_argmax(np.asarray(env.distances[0, 1:], dtype=np.float64), mask)
