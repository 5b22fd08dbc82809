"""QIU — query-instance uncertainty (DRAL §4.3, [22]; uncertainty sampling, Lewis & Gale, SIGIR 1994).

Source definition: a probabilistic classifier is trained on the labels so far, and the instance
whose predicted class probability is closest to 0.5 is asked next; the classifier is retrained as
answers arrive.

Ours: the instance is a (query, candidate) pair and the classifier is a 1-D logistic regression
P(same | d) = σ(a + b·d) on their distance ``d`` (Newton fit with a small ridge, see
:mod:`.logistic`). The open candidate with P(same) closest to 0.5 — nearest the fitted boundary
d* = −a/b — is asked (ties: the nearer one). Until a "same" and a "different" answer have both been
seen there is no boundary, and the nearest open candidate is asked.

Distances are the round's raw metric distances (``env.distances[0, 1:]``: Euclidean or KISSME, not
normalised per episode), so every distance within a round is on one scale. At each round start the
answered pairs so far (``ctx.pos_pairs``/``ctx.neg_pairs``) are re-measured under the new metric and
the model refitted; after every answer the (distance, answer) pair is added and the model refitted
(warm-started, a few Newton steps).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import RoundContext, Strategy, masked_argmax
from .logistic import fit_logistic


class QIUStrategy(Strategy):
    name = "qiu"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.d = np.empty(0)  # distances of the answered pairs (the round's metric)
        self.y = np.empty(0)  # 1 "same", 0 "different"
        self.coef: np.ndarray | None = None  # (a, b); None until both answer kinds exist
        self.features: np.ndarray | None = None  # the round's pool features and metric (begin_round)
        self.metric = None

    @property
    def boundary(self) -> float | None:
        """The distance where P(same) = 0.5 (None before a fit)."""
        if self.coef is None or self.coef[1] == 0:
            return None
        return float(-self.coef[0] / self.coef[1])

    def begin_round(self, ctx: RoundContext) -> None:
        self.features, self.metric = ctx.features, ctx.metric  # to measure each answered pair in observe
        dp = _pair_distances(ctx.metric, ctx.features, ctx.pos_pairs)
        dn = _pair_distances(ctx.metric, ctx.features, ctx.neg_pairs)
        self.d, self.y = np.concatenate([dp, dn]), np.concatenate([np.ones(len(dp)), np.zeros(len(dn))])
        self.coef = None
        self._fit()

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        row = np.asarray(env.distances[0, 1:], dtype=np.float64)
        if self.coef is None:
            return masked_argmax(-row, mask)  # nearest-first
        return masked_argmax(-np.abs(self.coef[0] + self.coef[1] * row), mask)

    def observe(self, t) -> None:
        # measured from the transition itself: on Ray, several episodes select before any observes
        self.d = np.append(self.d, _pair_distances(self.metric, self.features, np.array([[t.query, t.candidate]])))
        self.y = np.append(self.y, 1.0 if t.answer > 0 else 0.0)
        self._fit()

    def _fit(self) -> None:
        if 0 < self.y.sum() < len(self.y):
            self.coef = fit_logistic(self.d[None], self.y, init=None if self.coef is None else self.coef[None])[0]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "d": torch.from_numpy(self.d.copy()), "y": torch.from_numpy(self.y.copy()),
                "coef": None if self.coef is None else torch.from_numpy(self.coef.copy())}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.d, self.y = state["d"].numpy().copy(), state["y"].numpy().copy()
        self.coef = None if state["coef"] is None else state["coef"].numpy().copy()


def _pair_distances(metric, features: np.ndarray, pairs: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Distance of each (i, j) pair under ``metric`` (the diagonal of chunked pairwise blocks)."""
    pairs = np.asarray(pairs).reshape(-1, 2)
    out = [np.diagonal(metric.pairwise(features[pairs[s:s + chunk, 0]], features[pairs[s:s + chunk, 1]]))
           for s in range(0, len(pairs), chunk)]
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)
