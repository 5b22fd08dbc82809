"""The one interface of the classification acquisition strategies (L2R-AL §III-E, §IV "Comparing algorithms").

Each cycle the experiment draws a random subset of the unlabelled pool, computes what the strategy
``requires`` on it (softmax outputs, embeddings, predicted losses) and asks :meth:`Acquisition.select`
for ``k`` subset positions to send to the oracle. Strategies that learn to predict the loss also
provide a :class:`~reidloop.l2r.loss_module.LossLearner` trained beside the target model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np

from ..loss_module import LossLearner

@dataclass
class AcquisitionInputs:
    """What a strategy may use, over the S subset items (and the L labelled items for core-set)."""

    size: int  # S
    probs: Optional[np.ndarray] = None  # (S, C) softmax outputs of the target model
    embeddings: Optional[np.ndarray] = None  # (S, D) the target model's penultimate features
    labelled_embeddings: Optional[np.ndarray] = None  # (L, D) the same for the labelled set
    predicted_loss: Optional[np.ndarray] = None  # (S,) the loss-prediction module's output


class Acquisition(ABC):
    """Pick ``k`` of the subset's items to label."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def make_learner(self, channels: Sequence[int]) -> Optional[LossLearner]:
        """The loss-prediction module trained with the target model (``channels``: its blocks' widths)."""
        return None

    def select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` distinct positions in [0, S), in the order picked."""
        if not 1 <= k <= inputs.size:
            raise ValueError(f"{self.name}: cannot pick k={k} of a subset of {inputs.size}")
        for key in self.requires:
            value = getattr(inputs, key)
            if value is None:
                raise ValueError(f"{self.name}: needs inputs.{key}, which was not computed")
            if key != "labelled_embeddings" and len(value) != inputs.size:
                raise ValueError(f"{self.name}: inputs.{key} has {len(value)} rows for a subset of {inputs.size}")
        picks = np.asarray(self._select(inputs, k, rng), dtype=np.int64)
        assert picks.shape == (k,) and len(np.unique(picks)) == k, f"{self.name} picked {picks}"
        return picks

    @abstractmethod
    def _select(self, inputs: AcquisitionInputs, k: int, rng: np.random.Generator) -> np.ndarray:
        ...


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first (ties: lower position first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
