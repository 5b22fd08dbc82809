"""Nearest: ask the query's nearest open candidates first (top-k verification).

What human-verification tools do without a learned policy: show the annotator the
top of the ranking (HVIL, which DRAL §4.3 compares with, has the top 50 labelled).
Candidates are nearest-first under the round's metric, so this is the lowest
askable position. A reference for DRAL: its agent has to learn something at least
as useful from Eq. 9. Not in the paper's list of strategies.
"""
from __future__ import annotations

import numpy as np

from .base import Strategy, masked_argmax


class NearestStrategy(Strategy):
    name = "nearest"

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        return masked_argmax(-np.asarray(env.distances[0, 1:], dtype=np.float64), mask)
