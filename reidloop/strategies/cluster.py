"""Cluster: ask the pair the round's clustering is least sure of (the zero-answer bar's question strategy).

Per round the pool is clustered as unsupervised adaptation would cluster it (:mod:`reidloop.adapt`):
the k-reciprocal Jaccard distance J of the round's features (centred per camera with ``camera_centring``
when the round knows the cameras, ``RoundContext.cameras``), DBSCAN (``eps``, ``min_samples``) with
the answers so far as constraints ("same" must-link, "different" cannot-link; an answer contradicting
earlier ones, as an erring annotator may give, is left out).

Rule: among the open candidates c of query q, ask the first under the order

1. relation: pairs in different clusters, or with an outlier (the merge/outlier boundary), before
   pairs already inside one cluster (which the pseudo-labels will link anyway);
2. |J(q, c) − eps|, smallest first: DBSCAN links at ``J <= eps``, so the pair nearest eps is where a
   slightly different clustering would decide otherwise;
3. J(q, c), then the episode's distance (``env.distances``), then the position: nearest first.

Pairs the answers already settle (same group, or groups known different, by transitivity) are never
asked while an unsettled candidate is open: the loop masks them only with ``infer_answers``, so the
strategy keeps its own :class:`~reidloop.pair_knowledge.PairKnowledge` of the round's answers and
those it observes. J and the labels are the round's input (``begin_round``); ``state_dict`` holds the
labels and the answers known, not the (N, N) matrix.
"""
from __future__ import annotations

import numpy as np
import torch

from ..adapt.clustering import cluster, jaccard_distance, radius
from ..adapt.train import camera_centred, unit
from ..pair_knowledge import PairKnowledge
from .base import RoundContext, Strategy


class ClusterStrategy(Strategy):
    name = "cluster"

    def __init__(self, seed: int = 0, eps: float = 0.6, min_samples: int = 4, k1: int = 20, k2: int = 6,
                 camera_centring: bool = False, eps_rho: float | None = None) -> None:
        """``eps``, ``min_samples``: DBSCAN's (cluster-contrast: 0.6, 4); ``eps_rho``: when set, each round's
        radius is :func:`~reidloop.adapt.clustering.auto_eps` of its distances instead of ``eps``; ``k1``,
        ``k2``: the Jaccard distance's; ``camera_centring``: cluster features centred per camera when the round
        knows the cameras, as adaptation does (:func:`reidloop.adapt.train.camera_centred`)."""
        super().__init__(seed)
        self.camera_centring = camera_centring
        if not 0 < eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (a Jaccard distance), got {eps!r}")
        self.eps, self.min_samples, self.k1, self.k2 = float(eps), min_samples, k1, k2
        if eps_rho is not None and not 0 < eps_rho <= 1:
            raise ValueError(f"eps_rho must be in (0, 1] or None, got {eps_rho!r}")
        self.eps_rho = eps_rho
        self.jaccard: np.ndarray | None = None  # (N, N) the round's Jaccard distance
        self.labels: np.ndarray | None = None  # (N,) the round's constrained clustering, -1 outliers
        self.knowledge: PairKnowledge | None = None
        self._answers: list[tuple[int, int, int]] = []  # the answers the knowledge holds, in order

    def begin_round(self, ctx: RoundContext) -> None:
        n = len(ctx.features)
        self.knowledge, self._answers = PairKnowledge(n), []
        for pairs, y in ((ctx.pos_pairs, 1), (ctx.neg_pairs, -1)):
            for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
                self._learn(a, b, y)
        feats = ctx.features
        if self.camera_centring and ctx.cameras is not None:
            feats = camera_centred(unit(np.asarray(feats, dtype=np.float32)), np.asarray(ctx.cameras))
        self.jaccard = jaccard_distance(feats, self.k1, self.k2)
        self.labels = cluster(self.jaccard, radius(self.jaccard, self.eps, self.eps_rho), self.min_samples,
                              *self.knowledge.constraints())

    def _learn(self, a: int, b: int, y: int) -> None:
        if a != b and self.knowledge.infer(a, b) is None:  # new and consistent: an implied one adds nothing
            self.knowledge.add(a, b, y)
            self._answers.append((a, b, y))

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        if self.jaccard is None:
            raise RuntimeError("ClusterStrategy.select before begin_round")
        open_pos = np.flatnonzero(mask)
        if open_pos.size == 0:
            raise ValueError("no askable candidate left in this episode")
        q = int(env.query)
        cands = np.asarray(env.candidates)[open_pos]
        unsettled = np.array([self.knowledge.infer(q, int(c)) is None for c in cands])
        if unsettled.any():  # every one settled: any open one (the loop's mask allows it)
            open_pos, cands = open_pos[unsettled], cands[unsettled]
        j = self.jaccard[q, cands].astype(np.float64)
        lq, lc = self.labels[q], self.labels[cands]
        inside = (lc == lq) & (lq >= 0)
        d = np.asarray(env.distances[0, 1:], dtype=np.float64)[open_pos]
        order = np.lexsort((open_pos, d, j, np.abs(j - self.eps), inside))
        return int(open_pos[order[0]])

    def observe(self, t) -> None:
        if self.knowledge is not None:
            self._learn(int(t.query), int(t.candidate), 1 if t.answer > 0 else -1)

    def state_dict(self) -> dict:
        ans = np.array(self._answers, dtype=np.int64).reshape(-1, 3)
        return {**super().state_dict(), "answers": torch.from_numpy(ans),
                "n": -1 if self.knowledge is None else self.knowledge.n,
                "labels": None if self.labels is None else torch.from_numpy(self.labels.copy())}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.labels = None if state["labels"] is None else state["labels"].numpy().copy()
        self.knowledge, self._answers = (None, []) if state["n"] < 0 else (PairKnowledge(state["n"]), [])
        for a, b, y in state["answers"].tolist():
            self._learn(a, b, y)
