"""L2R-AL's query strategy (§III-E): the subset items with the highest losses predicted by the module
trained with the listwise rank loss (Eq. 5–6) — the highest predicted ranks, i.e. the most uncertain.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..loss_module import L2RLearner
from ..sorter import GRUSorter
from .base import Acquisition, AcquisitionInputs, top_k


class L2RAcquisition(Acquisition):
    name = "l2r"
    requires = ("predicted_loss",)

    def __init__(self, sorter: GRUSorter, hidden: int = 128, negative_slope: float = 0.01, lr: float = 1e-3) -> None:
        self.sorter, self.hidden, self.negative_slope, self.lr = sorter, hidden, negative_slope, lr

    def make_learner(self, channels: Sequence[int]) -> L2RLearner:
        return L2RLearner(channels, self.sorter, self.hidden, self.negative_slope, self.lr)

    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return top_k(inputs.predicted_loss, k)
