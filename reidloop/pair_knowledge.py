"""What the answers so far imply about pairs never asked: "same person" is transitive.

The annotator's answers partition the pool: a "same" answer joins two groups (union-find), a
"different" answer marks two groups as different. Hence, for any pair (a, b):

* a and b in one group                       → +1 (a~x, x~b ⇒ a~b);
* their groups marked different              → −1 (a~x, x≁y, y~b ⇒ a≁b);
* otherwise                                  → unknown: only a question can tell.

The loop never asks an implied pair: it is applied to the query's state for free, like a pair
answered from the other side (paper §3.2.1 asks each candidate once; this extends "once" to what
the answers already settle). With an error-free annotator the implied answers are the truth; with
``oracle.error_rate > 0`` an error also propagates, as it would in any label set built from the
answers. An answer can never contradict the knowledge, because implied pairs are not asked.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .unionfind import UnionFind


class PairKnowledge:
    """Union-find of "same" answers with a set of "different" group pairs over ``n`` pool items."""

    def __init__(self, n: int, answers: Iterable[tuple[int, int, int]] = (), strict: bool = True) -> None:
        """``answers`` in the order given; ``strict=False`` skips (and counts in ``conflicts``) an answer
        that contradicts the earlier ones, as an erring annotator's log without inference may hold."""
        self._groups = UnionFind(n)  # ValueError for n < 0
        self.n = n
        self._different: dict[int, set[int]] = {}  # group root → roots of groups known different
        self.conflicts = 0
        for a, b, y in answers:
            if not strict and self.infer(a, b) not in (None, y):
                self.conflicts += 1
                continue
            self.add(a, b, y)

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"pool index {i} is out of range for a pool of {self.n} images")
        return i

    def group(self, i: int) -> int:
        """The root of ``i``'s group (its smallest member)."""
        return self._groups.find(self._check(i))

    def infer(self, a: int, b: int) -> Optional[int]:
        """+1 / −1 when the answers so far settle the pair (a, b), else None."""
        ra, rb = self.group(a), self.group(b)
        if ra == rb:
            return 1
        return -1 if rb in self._different.get(ra, ()) else None

    def add(self, a: int, b: int, y: int) -> None:
        """Record the answer ``y`` (±1) for (a, b); raises ValueError when it contradicts the knowledge."""
        if y not in (1, -1):
            raise ValueError(f"answer for ({a}, {b}) must be +1 or -1, got {y!r}")
        if int(a) == int(b):
            raise ValueError(f"pair ({a}, {b}) is one image")
        known = self.infer(a, b)
        if known is not None and known != y:
            raise ValueError(f"answer {y:+d} for ({a}, {b}) contradicts the earlier answers, which imply {known:+d}")
        if y == -1:
            ra, rb = self.group(a), self.group(b)
            self._different.setdefault(ra, set()).add(rb)
            self._different.setdefault(rb, set()).add(ra)
            return
        joined = self._groups.union(self._check(a), self._check(b))
        if joined is None:
            return
        keep, gone = joined
        moved = self._different.pop(gone, set())
        for r in moved:  # re-point the other side of every "different" edge of the absorbed group
            others = self._different[r]
            others.discard(gone)
            others.add(keep)
        if moved:
            self._different.setdefault(keep, set()).update(moved)

    def roots(self) -> np.ndarray:
        """(n,) the group root of every pool item."""
        return self._groups.roots()

    def constraints(self) -> tuple[np.ndarray, np.ndarray]:
        """The knowledge as clustering constraints over the pool: (must-link (P, 2): every member of a group
        paired with its root; cannot-link (Q, 2): one pair of roots for each pair of groups known different,
        root < root). Together they imply exactly what the answers settle."""
        roots = self.roots()
        members = np.flatnonzero(roots != np.arange(self.n))
        must = np.stack([roots[members], members], 1).astype(np.int64)
        cannot = sorted({(a, b) for a, others in self._different.items() for b in others if a < b})
        return must.reshape(-1, 2), np.array(cannot, dtype=np.int64).reshape(-1, 2)

    def settled_pairs(self, items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Every pair among ``items`` that the answers settle, as local index pairs (i < j): (same, different)."""
        roots = np.array([self.group(i) for i in items], dtype=np.int64)
        iu = np.triu_indices(len(roots), 1)
        pairs = np.stack(iu, 1).reshape(-1, 2)
        ra, rb = roots[iu[0]], roots[iu[1]]
        same = ra == rb
        diff = np.array([b in self._different.get(a, ()) for a, b in zip(ra.tolist(), rb.tolist())], dtype=bool)
        return pairs[same], pairs[diff & ~same]


def implied_answers(infer: Callable[[int, int], Optional[int]], query: int, candidates: np.ndarray,
                    mask: np.ndarray) -> dict[int, int]:
    """{position: ±1} for the still-askable (``mask``) candidates whose answer ``infer`` already knows."""
    return {int(a): y for a in np.flatnonzero(mask) if (y := infer(query, int(candidates[a]))) is not None}
