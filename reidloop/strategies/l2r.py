"""L2R — learned-loss ranking (Li et al., L2R-AL, §III) as a strategy of the Re-ID loop.

Each candidate pair (q, g) of a query episode gets a *predicted loss* from a small head over pair
features ``φ(q, g) = [|f_q − f_g|, f_q ⊙ f_g, d̃(q, g)]`` (L2-normalised embeddings, the round's metric
distance ``d̃`` scaled by the median answered-pair distance): FC → LeakyReLU(0.01) → FC, the structure of
the paper's module (§III-C) on pair features instead of pooled feature maps. The candidate with the
highest predicted loss is asked (§III-E).

The "true" loss of an answered pair under the current embedding is the logistic verification loss
``ℓ = softplus(y·(d̃ − τ)/m)`` (y = ±1 the answer, τ midway between the mean positive and negative
distances, m = ``DralConfig.margin``): high for far positives and near negatives. The head is trained by
the rank loss of Eq. 5–6 — MSE between the frozen sorter's ranks of predicted losses and the ranks of
ℓ over random lists of answered pairs — so only the order of the losses matters (τ and m only set it).
It is retrained from all answers at the start of each round and every ``update_every`` answers; until
``min_answers`` pairs are answered it asks at random.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DralConfig
from ..config.l2r import L2RReidConfig, SorterConfig
from ..config.loader import from_dict, to_dict
from ..l2r.loss_module import rank_loss
from ..l2r.sorter import GRUSorter, freeze, load_sorter, train_sorter
from .base import RoundContext, Strategy, Transition, masked_argmax


@lru_cache(maxsize=4)
def _trained_sorter(cfg_key: str) -> dict:
    """Train the default sorter once per process (keyed by its config); returns its state dict."""
    return train_sorter(from_dict(SorterConfig, json.loads(cfg_key))).state_dict()


def default_sorter(cfg: L2RReidConfig) -> tuple[GRUSorter, SorterConfig]:
    """The sorter at ``cfg.sorter_path``, else ``cfg.sorter`` trained in-process (once, then reused)."""
    if cfg.sorter_path is not None:
        return load_sorter(cfg.sorter_path)
    sorter = GRUSorter(cfg.sorter.hidden, cfg.sorter.layers)
    sorter.load_state_dict(_trained_sorter(json.dumps(to_dict(cfg.sorter), sort_keys=True)))
    return freeze(sorter), cfg.sorter


class PairLossHead(nn.Module):
    """(P, 2D+1) pair features → (P,) predicted losses: FC → LeakyReLU(0.01) → FC (§III-C)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def pair_distances(metric, features: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(P,) metric distances between ``features[a[i]]`` and ``features[b[i]]``."""
    out = np.empty(len(a))
    for s in range(0, len(a), chunk):
        D = metric.pairwise(features[a[s:s + chunk]], features[b[s:s + chunk]])
        out[s:s + chunk] = np.diagonal(D)
    return out


class L2RStrategy(Strategy):
    name = "l2r"

    def __init__(self, dral_cfg: DralConfig, seed: int = 0, cfg: Optional[L2RReidConfig] = None,
                 sorter: Optional[GRUSorter] = None) -> None:
        super().__init__(seed)
        self.dral, self.cfg, self.seed = dral_cfg, cfg or L2RReidConfig(), seed
        # a sorter passed in is taken to be trained as cfg.sorter says (its list lengths)
        self.sorter, self.sorter_cfg = (freeze(sorter), self.cfg.sorter) if sorter is not None \
            else default_sorter(self.cfg)
        self.head: Optional[PairLossHead] = None
        self.trained = False
        self.round = 0
        self.features: Optional[torch.Tensor] = None  # (N, D) L2-normalised pool embedding
        self.raw_features: Optional[np.ndarray] = None
        self.metric = None
        self.answers: list[tuple[int, int, int]] = []  # (query, candidate, ±1), all rounds
        self.since_fit = 0
        self.scale, self.tau = 1.0, 1.0
        self.last_fit_loss: Optional[float] = None

    # ------------------------------------------------------------ learning
    def begin_round(self, ctx: RoundContext) -> None:
        self.round = ctx.round
        self.raw_features = np.asarray(ctx.features, dtype=np.float32)
        self.features = F.normalize(torch.as_tensor(self.raw_features), dim=1)
        self.metric = ctx.metric
        self.answers = [(int(q), int(c), 1) for q, c in ctx.pos_pairs] + \
                       [(int(q), int(c), -1) for q, c in ctx.neg_pairs]
        if self.head is None:
            with torch.random.fork_rng():  # the head's initialisation leaves the global RNG alone
                torch.manual_seed(self.seed)
                self.head = PairLossHead(2 * self.features.shape[1] + 1, self.cfg.hidden)
        elif self.head.in_dim != 2 * self.features.shape[1] + 1:
            raise ValueError(f"l2r: the pool features changed dimension to {self.features.shape[1]}")
        self.fit()

    def observe(self, t: Transition) -> None:
        self.answers.append((t.query, t.candidate, int(t.answer)))
        self.since_fit += 1
        if self.since_fit >= self.cfg.update_every:
            self.fit()

    def pair_features(self, q: np.ndarray, c: np.ndarray, d_scaled: np.ndarray) -> torch.Tensor:
        fq, fc = self.features[torch.as_tensor(q)], self.features[torch.as_tensor(c)]
        d = torch.as_tensor(d_scaled, dtype=torch.float32)[:, None]
        return torch.cat([(fq - fc).abs(), fq * fc, d], 1)

    def pair_losses(self, d_scaled: np.ndarray, y: np.ndarray) -> torch.Tensor:
        """The observed loss of each answered pair: softplus(y·(d̃ − τ)/m)."""
        return F.softplus(torch.as_tensor(y * (d_scaled - self.tau) / max(self.dral.margin, 1e-6),
                                          dtype=torch.float32))

    def fit(self) -> None:
        """Retrain the head on every answer so far with the sorter-based rank loss (Eq. 5–6)."""
        self.since_fit = 0
        lo, hi = self.sorter_cfg.lengths
        n = len(self.answers)
        if n < max(self.cfg.min_answers, lo) or self.features is None:
            return
        q, c, y = (np.array(v) for v in zip(*self.answers))
        d = pair_distances(self.metric, self.raw_features, q, c)
        self.scale = max(float(np.median(d)), 1e-12)
        ds = d / self.scale
        pos, neg = ds[y == 1], ds[y == -1]
        self.tau = float(0.5 * (pos.mean() + neg.mean())) if len(pos) and len(neg) else 1.0
        x, target = self.pair_features(q, c, ds), self.pair_losses(ds, y)
        length = min(n, hi)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.round * 10_007 + n)
        opt = torch.optim.Adam(self.head.parameters(), lr=self.cfg.lr)
        self.head.train()
        for _ in range(self.cfg.steps):
            idx = torch.rand(self.cfg.lists_per_step, n, generator=g).argsort(1)[:, :length]
            loss = rank_loss(self.head(x[idx]), target[idx], self.sorter)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.head.eval()
        self.trained = True
        if self.cfg.steps:
            self.last_fit_loss = float(loss.detach())

    # ------------------------------------------------------------- asking
    @torch.no_grad()
    def predicted_losses(self, env) -> np.ndarray:
        """(ns,) predicted loss of each candidate pair of the episode."""
        d = np.asarray(env.distances[0, 1:], dtype=np.float64) / self.scale
        x = self.pair_features(np.full(len(env.candidates), env.query), np.asarray(env.candidates), d)
        return self.head(x).numpy()

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        if not self.trained:
            return int(self.rng.choice(np.flatnonzero(mask)))
        return masked_argmax(self.predicted_losses(env), mask)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "head": self.head.state_dict() if self.head is not None else {},
                "head_in": self.head.in_dim if self.head is not None else 0, "trained": self.trained,
                "scale": self.scale, "tau": float(self.tau), "sorter": self.sorter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sorter.load_state_dict(state["sorter"])
        self.trained = bool(state["trained"])
        self.scale, self.tau = float(state["scale"]), float(state["tau"])
        if state["head_in"]:
            self.head = PairLossHead(int(state["head_in"]), self.cfg.hidden)
            self.head.load_state_dict(state["head"])
            self.head.eval()
