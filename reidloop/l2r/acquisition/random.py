"""Random sampling: ``k`` subset items uniformly without replacement (the baseline of §IV)."""
from __future__ import annotations

import numpy as np

from .base import Acquisition, AcquisitionInputs


class RandomAcquisition(Acquisition):
    name = "random"

    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(inputs.size, size=k, replace=False)
