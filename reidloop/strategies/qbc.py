"""QBC — query by committee (DRAL §4.3, [1]).

A committee of hypotheses votes on every candidate ("same person as the
query?"); the candidate with the largest disagreement (vote entropy) is asked.
Members are random feature subspaces (bagging over embedding dimensions, re-drawn
each round); each votes "same" for the candidates among its own `top` nearest to
the query, where `top` is the expected number of positives per query — the mean
observed so far, at least 1, 2 before any answer.
"""
from __future__ import annotations

import numpy as np

from .base import RoundContext, Strategy, masked_argmax


class QBCStrategy(Strategy):
    name = "qbc"

    def __init__(self, seed: int = 0, members: int = 8, subspace: float = 0.5) -> None:
        super().__init__(seed)
        self.members, self.subspace = members, subspace
        self.dims: list[np.ndarray] = []
        self.features: np.ndarray | None = None
        self.top = 2

    def begin_round(self, ctx: RoundContext) -> None:
        self.features = ctx.features
        d = ctx.features.shape[1]
        k = max(1, int(round(self.subspace * d)))
        self.dims = [np.sort(self.rng.choice(d, size=k, replace=False)) for _ in range(self.members)]
        queries = np.unique(np.concatenate([ctx.pos_pairs[:, 0], ctx.neg_pairs[:, 0]])) \
            if len(ctx.pos_pairs) + len(ctx.neg_pairs) else np.empty(0)
        if queries.size:
            self.top = max(1, int(round(len(ctx.pos_pairs) / queries.size)))

    def votes(self, env) -> np.ndarray:
        """(members, ns) bool: which candidates each member calls "same"."""
        f = self.features
        q, c = f[env.query], f[env.candidates]
        out = np.zeros((self.members, len(env.candidates)), dtype=bool)
        for m, dims in enumerate(self.dims):
            dist = ((c[:, dims] - q[dims]) ** 2).sum(1)
            out[m, np.argsort(dist, kind="stable")[: self.top]] = True
        return out

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        p = self.votes(env).mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -(np.nan_to_num(p * np.log(p)) + np.nan_to_num((1 - p) * np.log(1 - p)))
        # tie-break towards nearer candidates (position order is nearest-first)
        return masked_argmax(entropy - 1e-6 * np.arange(len(p)), mask)
