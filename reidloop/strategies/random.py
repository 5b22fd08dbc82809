"""Random: ask a uniformly random unasked candidate (the baseline active learner of DRAL §4.3)."""
from __future__ import annotations

import numpy as np

from .base import Strategy


class RandomStrategy(Strategy):
    name = "random"

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        valid = np.flatnonzero(mask)
        if valid.size == 0:
            raise ValueError("no askable candidate left in this episode")
        return int(self.rng.choice(valid))
