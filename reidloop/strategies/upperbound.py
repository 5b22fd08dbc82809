"""UpperBound (DRAL §4.2, Table 5): fine-tuned on every training label (cost n(n−1)/2 pairs).

It asks nothing: at each round boundary the loop fine-tunes it exactly as the
active learners (same schedule, lr and loss), but with every pair of the pool
labelled from the ground-truth identities.
"""
from __future__ import annotations

from .base import Strategy


class UpperBoundStrategy(Strategy):
    name = "upperbound"
    asks_questions = False
    finetune = "full"

    def select(self, env, obs, mask) -> int:
        raise RuntimeError("the UpperBound asks no questions")
