"""QBC — query by committee (DRAL §4.3, [1]; Seung et al., COLT 1992; query by bagging, Abe & Mamitsuka, ICML 1998).

Source definition: a committee of classifiers, each trained on the labelled data (on a bootstrap
resample of it, in query by bagging), votes on every unlabelled instance; the instance with the
largest disagreement — the vote entropy −Σ_c (V_c/M) log(V_c/M) — is asked, and the members are
retrained as labels arrive.

Ours: the instance is a (query, candidate) pair and member m is a logistic regression "same
person?" P_m(same) = σ(a_m + b_m·d_m) on the pair's Euclidean distance d_m over its own random
half of the embedding dimensions (random subspace method, Ho 1998, re-drawn each round), fitted
with a small ridge (:mod:`.logistic`) on its bootstrap of the answered pairs — each answer enters
member m with a Poisson(1) count (online bagging, Oza & Russell 2001), so the bootstrap grows one
answer at a time. At each round start the members are refitted on ``ctx.pos_pairs``/``neg_pairs``
under the new features; after every answer they are refitted warm-started (a few Newton steps on
(M, N) arrays). A member votes "same" when P_m > 0.5. A member whose bootstrap does not yet hold
both answer kinds votes by its subspace-nearest rule instead: "same" for its own ``top`` nearest
candidates, ``top`` being the mean number of positives per answered query (at least 1; 2 before
any answer). The open candidate with the highest vote entropy is asked (ties: the nearer one).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import RoundContext, Strategy, masked_argmax
from .logistic import fit_logistic


class QBCStrategy(Strategy):
    name = "qbc"

    def __init__(self, seed: int = 0, members: int = 8, subspace: float = 0.5, bootstrap: bool = True) -> None:
        super().__init__(seed)
        self.members, self.subspace, self.bootstrap = members, subspace, bootstrap
        self.dims: list[np.ndarray] = []
        self.features: np.ndarray | None = None  # the round's input (from begin_round), not state
        self.top = 2
        self.dist = np.empty((members, 0))  # (M, N) subspace distance of each answered pair per member
        self.y = np.empty(0)  # (N,) 1 "same", 0 "different"
        self.w = np.empty((members, 0))  # (M, N) bootstrap counts
        self.coef = np.zeros((members, 2))  # (M, 2) logistic (a, b); meaningful where trained
        self.trained = np.zeros(members, dtype=bool)

    def begin_round(self, ctx: RoundContext) -> None:
        self.features = ctx.features
        d = ctx.features.shape[1]
        k = max(1, int(round(self.subspace * d)))
        self.dims = [np.sort(self.rng.choice(d, size=k, replace=False)) for _ in range(self.members)]
        pos, neg = np.asarray(ctx.pos_pairs).reshape(-1, 2), np.asarray(ctx.neg_pairs).reshape(-1, 2)
        pairs = np.concatenate([pos, neg]).astype(np.int64)
        if len(pairs):
            self.top = max(1, int(round(len(pos) / np.unique(pairs[:, 0]).size)))
        f = ctx.features
        self.dist = np.concatenate([self._subspace_dist(f[pairs[s:s + 4096, 0]], f[pairs[s:s + 4096, 1]]).T
                                    for s in range(0, len(pairs), 4096)] or [np.empty((self.members, 0))], axis=1)
        self.y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
        self.w = self._counts(len(pairs))
        self.coef, self.trained = np.zeros((self.members, 2)), np.zeros(self.members, dtype=bool)
        self._fit()

    def _subspace_dist(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), M): Euclidean distance of rows a[i], b[i] (b may be one broadcast row) on each member's dims."""
        sel = np.zeros((a.shape[1], self.members), dtype=np.float32)
        for m, dims in enumerate(self.dims):
            sel[dims, m] = 1.0
        return np.sqrt(((np.asarray(a, dtype=np.float32) - b) ** 2) @ sel).astype(np.float64)

    def _counts(self, n: int) -> np.ndarray:
        return self.rng.poisson(1.0, (self.members, n)).astype(np.float64) if self.bootstrap \
            else np.ones((self.members, n))

    def _fit(self) -> None:
        pos, neg = (self.w * self.y).sum(1), (self.w * (1 - self.y)).sum(1)
        self.trained = (pos > 0) & (neg > 0)
        tr = np.flatnonzero(self.trained)
        if tr.size:
            self.coef[tr] = fit_logistic(self.dist[tr], self.y, self.w[tr], init=self.coef[tr])

    def votes(self, env) -> np.ndarray:
        """(members, ns) bool: which candidates each member calls "same"."""
        f = self.features
        d = self._subspace_dist(f[env.candidates], f[env.query]).T  # (M, ns)
        out = self.coef[:, :1] + self.coef[:, 1:] * d > 0
        for m in np.flatnonzero(~self.trained):  # no fit yet: the member's own `top` nearest
            out[m] = False
            out[m, np.argsort(d[m], kind="stable")[: self.top]] = True
        return out

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        p = self.votes(env).mean(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -(np.nan_to_num(p * np.log(p)) + np.nan_to_num((1 - p) * np.log(1 - p)))
        # tie-break towards nearer candidates (position order is nearest-first)
        return masked_argmax(entropy - 1e-6 * np.arange(len(p)), mask)

    def observe(self, t) -> None:
        f = self.features
        self.dist = np.concatenate([self.dist, self._subspace_dist(f[[t.query]], f[[t.candidate]]).T], axis=1)
        self.y = np.append(self.y, 1.0 if t.answer > 0 else 0.0)
        self.w = np.concatenate([self.w, self._counts(1)], axis=1)
        self._fit()

    def state_dict(self) -> dict:
        """Everything but the round's features (the loop calls begin_round after a restore)."""
        arr = lambda a: torch.from_numpy(np.array(a))  # noqa: E731 - a copy, so later appends don't alias
        return {**super().state_dict(), "dims": [arr(d) for d in self.dims], "top": self.top, "dist": arr(self.dist),
                "y": arr(self.y), "w": arr(self.w), "coef": arr(self.coef), "trained": arr(self.trained)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.dims = [d.numpy().copy() for d in state["dims"]]
        self.top = int(state["top"])
        self.dist, self.y, self.w = (state[k].numpy().copy() for k in ("dist", "y", "w"))
        self.coef, self.trained = state["coef"].numpy().copy(), state["trained"].numpy().copy()
