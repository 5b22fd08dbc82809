"""QIU — query-instance uncertainty (DRAL §4.3, [22]).

Asks the candidate whose "same person?" decision is least certain: the one
whose distance to the query lies closest to the decision boundary. The boundary
is the midpoint between the mean distances of the "same" and the "different"
pairs answered so far (under the round's metric, normalised like Eq. 4); before
there are answers of both kinds it is the median candidate distance.
"""
from __future__ import annotations

import numpy as np

from .base import RoundContext, Strategy, masked_argmax


class QIUStrategy(Strategy):
    name = "qiu"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.boundary: float | None = None  # in units of the pool's mean pair distance

    def begin_round(self, ctx: RoundContext) -> None:
        self.boundary = None
        if len(ctx.pos_pairs) and len(ctx.neg_pairs):
            f = ctx.features
            dp = _pair_distances(ctx.metric, f, ctx.pos_pairs)
            dn = _pair_distances(ctx.metric, f, ctx.neg_pairs)
            self.boundary = 0.5 * (dp.mean() + dn.mean())

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        d = env.distances[0, 1:]
        boundary = self.boundary if self.boundary is not None else float(np.median(d))
        return masked_argmax(-np.abs(d - boundary), mask)


def _pair_distances(metric, features: np.ndarray, pairs: np.ndarray, limit: int = 4096,
                    chunk: int = 256) -> np.ndarray:
    """Distance of each (i, j) pair under ``metric`` (the diagonal of chunked pairwise blocks)."""
    pairs = np.asarray(pairs)[:limit]
    out = [np.diagonal(metric.pairwise(features[pairs[s:s + chunk, 0]], features[pairs[s:s + chunk, 1]]))
           for s in range(0, len(pairs), chunk)]
    return np.concatenate(out) if out else np.empty(0)
