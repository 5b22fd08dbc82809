"""LL4AL (Yoo & Kweon, CVPR 2019, [9]): a module on the features of all blocks predicts the loss, trained
with the pairwise margin ranking loss jointly with the target model; the highest predicted losses are asked.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..loss_module import LL4ALLearner
from .base import Acquisition, AcquisitionInputs, top_k


class LL4ALAcquisition(Acquisition):
    name = "ll4al"
    requires = ("predicted_loss",)

    def __init__(self, hidden: int = 128, margin: float = 1.0, weight: float = 1.0, detach_epoch: int = 120,
                 lr: float = 1e-3) -> None:
        self.hidden, self.margin, self.weight, self.detach_epoch, self.lr = hidden, margin, weight, detach_epoch, lr

    def make_learner(self, channels: Sequence[int]) -> LL4ALLearner:
        return LL4ALLearner(channels, self.hidden, self.margin, self.weight, self.detach_epoch, self.lr)

    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return top_k(inputs.predicted_loss, k)
