"""The one interface every acquisition strategy implements.

A strategy sees what a real system would see — the round's features and
metric, the current query episode (state, candidates, answers so far) — and
never the ground-truth identities. Per round the loop calls ``begin_round``;
per question ``select`` (which candidate position to ask) and then ``observe``
(the answer, reward and next state, for strategies that learn, e.g. DRAL).

Two references do not ask at all (``asks_questions = False``): Baseline (the
pre-trained model as is) and UpperBound (fine-tuned on every training label).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import numpy as np

from ..dral.env import QueryEpisodeEnv
from ..dral.metric import Metric


@dataclass
class RoundContext:
    """What a strategy may use at the start of a round."""

    round: int
    features: np.ndarray  # (N, D) current embedding of the unlabelled pool
    metric: Metric  # the round's distance (Euclidean or KISSME on the answers so far)
    pos_pairs: np.ndarray  # (P, 2) pool-index pairs answered "same" so far
    neg_pairs: np.ndarray  # (Q, 2) pool-index pairs answered "different" so far
    cameras: Optional[np.ndarray] = None  # (N,) each pool image's camera, for camera-aware strategies


@dataclass
class Transition:
    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    next_mask: np.ndarray
    done: bool
    answer: int
    query: int  # pool index of the query
    candidate: int  # pool index of the asked candidate


class Strategy(ABC):
    """Choose the next question within a query episode; optionally learn from the answer."""

    name: ClassVar[str]
    asks_questions: ClassVar[bool] = True
    finetune: ClassVar[Literal["pairs", "full", "none"]] = "pairs"
    # learns a policy that carries over to another pool, so ``dral.warmstart_passes`` applies (DRAL)
    warm_starts: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def begin_round(self, ctx: RoundContext) -> None:  # noqa: B027 - optional hook
        """Called once per round after features and metric are (re)computed."""

    def begin_episode(self, answers_left: int, queries_left: int) -> None:  # noqa: B027 - optional hook
        """Called before each query's episode in the loop: the run's answers and queries still to come."""

    def stop(self, env: QueryEpisodeEnv, obs: np.ndarray, mask: np.ndarray) -> bool:
        """True ends the query's episode before Kmax (open candidates left unasked); never by default."""
        return False

    @abstractmethod
    def select(self, env: QueryEpisodeEnv, obs: np.ndarray, mask: np.ndarray) -> int:
        """Return a candidate position ``a`` with ``mask[a]`` True."""

    def observe(self, t: Transition) -> None:  # noqa: B027 - optional hook
        """Learn from one answered question (only learning strategies override this)."""

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def masked_argmax(scores: np.ndarray, mask: np.ndarray) -> int:
    """Index of the highest score among valid positions (ties → lowest index)."""
    if not mask.any():
        raise ValueError("no askable candidate left in this episode")
    return int(np.argmax(np.where(mask, scores, -np.inf)))


def query_distances(env: QueryEpisodeEnv) -> np.ndarray:
    """(ns,) distance of each candidate to the query, normalised by the episode's max (as in Eq. 4)."""
    D = env.distances
    return D[0, 1:] / max(float(D.max()), 1e-12)
