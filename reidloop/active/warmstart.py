"""Warm-starting a learning strategy on the labelled pre-training identities (opt-in, not in the paper).

The paper's agent starts untrained and learns only from the human's answers: on Market-1501 that is
12,936 queries × Kmax transitions, but on a small pool one run gives it a few hundred to a thousand,
too few for a 3×FC-256 Q-network over a (ns+1)² state (benchmarks/README.md). The identities the CNN
was pre-trained on are labelled already, so episodes over them cost no human answer: with
``dral.warmstart_passes = P`` the agent first browses every labelled image as a query P times, with
the answers read from the labels, exactly as in Algorithm 1 otherwise (same Kmax, ns, κ, thred, m and
reward, metric refitted per round on the pass's answers, settled pairs revealed for free). Nothing of
this reaches the answer log, the budget or the CNN; only the agent (its Q-network, replay buffer and
ε schedule) carries over to the unlabelled pool.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..config.schema import DralConfig
from ..dral.metric import fit_metric
from ..oracle import ask_each
from ..pair_knowledge import PairKnowledge
from ..strategies import RoundContext, Strategy, Transition
from .engine import Answers, LocalAgent, LocalSlots, run_round
from .episodes import nearest_candidates_all, round_slices, split_pairs


@dataclass
class WarmStartStats:
    passes: int
    episodes: int
    questions: int  # transitions the strategy learnt from
    same: int  # of them answered "same"
    mean_reward: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Tally(Strategy):
    """Forwards to the strategy being warmed up and counts what it was told."""

    name = "tally"

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.questions, self.same, self.reward = 0, 0, 0.0

    def select(self, env, obs, mask) -> int:
        return self.inner.select(env, obs, mask)

    def observe(self, t: Transition) -> None:
        self.questions += 1
        self.same += t.answer > 0
        self.reward += t.reward
        self.inner.observe(t)


class _Labels:
    """Answers from the labels: free, unlimited, never logged; remembers what it was asked (for the metric)."""

    remaining = None

    def __init__(self, pids: np.ndarray) -> None:
        self.pids, self.asked = pids, []

    def known(self, q: int, c: int) -> None:
        return None

    def known_batch(self, requests):
        return [[None] * len(cands) for _, cands in requests]

    def ask(self, q: int, c: int, **_) -> int:
        y = 1 if self.pids[q] == self.pids[c] else -1
        self.asked.append((q, c, y))
        return y

    def ask_batch(self, questions, strategy: str):
        return ask_each(self, questions, strategy)


def warm_start(strategy: Strategy, features: np.ndarray, pids: np.ndarray, cfg: DralConfig, passes: int,
               every: float, seed: int = 0) -> WarmStartStats:
    """Run ``passes`` passes of labelled query episodes through ``strategy`` (it acts and learns as usual).

    ``features`` (N, D) are the labelled images under the pre-trained CNN and ``pids`` their identities;
    ``every`` is the round length as a fraction of the queries (``finetune.every``), so the metric is
    refitted as often as in the real loop. The query order of each pass comes from ``seed``.
    """
    features = np.asarray(features)
    pids = np.asarray(pids)
    if passes < 0:
        raise ValueError(f"dral.warmstart_passes: {passes!r} must be >= 0")
    if len(features) != len(pids):
        raise ValueError(f"warm start: {len(features)} feature rows but {len(pids)} identities")
    if passes and len(features) <= cfg.ns:
        raise ValueError(f"dral.warmstart_passes: the labelled set has {len(features)} images, "
                         f"it needs more than dral.ns={cfg.ns} to give each query its candidates")
    n = len(features)
    tally = LocalAgent(_Tally(strategy))
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(passes):
        order = rng.permutation(n)
        labels = _Labels(pids)
        answers = Answers(labels, PairKnowledge(n))  # settled pairs: known, revealed for free, never asked
        for r, sl in enumerate(round_slices(n, every), start=1):
            pos, neg = split_pairs(*np.array(labels.asked, dtype=np.int64).reshape(-1, 3).T)
            metric = fit_metric(cfg.metric, features, pos, neg)
            strategy.begin_round(RoundContext(r, features, metric, pos, neg))
            queries = order[sl]
            cands = nearest_candidates_all(features, metric, queries, cfg.ns)
            run_round(LocalSlots(cfg, features, metric), tally, answers, queries, cands, r, cfg.kmax,
                      reward_kind=cfg.reward)
    told = tally.strategy
    return WarmStartStats(passes=passes, episodes=passes * n, questions=told.questions, same=int(told.same),
                          mean_reward=told.reward / max(told.questions, 1),
                          seconds=round(time.perf_counter() - start, 2))
