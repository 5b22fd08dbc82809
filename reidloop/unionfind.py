"""Union-find (disjoint sets) over the items 0..n−1: "same person" answers joined into groups.

Each group's root is its smallest member (a union keeps the smaller root), so roots, and labels
numbered from them, do not depend on the order the pairs came in. Finds halve their paths.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


class UnionFind:
    """Disjoint sets of 0..n−1, joined by ``pairs`` and then :meth:`union`. Indices are not checked here:
    callers that take them from outside check them first (PairKnowledge, losses.pair_masks)."""

    def __init__(self, n: int, pairs: Iterable[tuple[int, int]] = ()) -> None:
        if n < 0:
            raise ValueError(f"n: {n!r} must be >= 0")
        self.n = n
        self._parent = list(range(n))
        for a, b in pairs:
            self.union(a, b)

    def find(self, i: int) -> int:
        """The root of ``i``'s group."""
        p = self._parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> Optional[tuple[int, int]]:
        """Join the groups of ``a`` and ``b``: (kept root, absorbed root), or None if they were one group."""
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return None
        keep, gone = min(ra, rb), max(ra, rb)
        self._parent[gone] = keep
        return keep, gone

    def roots(self) -> np.ndarray:
        """(n,) int64: the root of every item's group."""
        return np.array([self.find(i) for i in range(self.n)], dtype=np.int64)
