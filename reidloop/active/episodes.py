"""The pieces of Algorithm 1 that step query episodes, shared by the loop and the agent warm-start.

``round_slices`` cuts the query order into rounds, ``nearest_candidates_all`` gives each query its ns
nearest pool images under the round's metric, and ``run_episode`` asks one query's questions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..dral.env import QueryEpisodeEnv, reset_episode
from ..dral.metric import Metric
from ..pair_knowledge import implied_answers
from ..strategies import Strategy, Transition

AnswerFn = Callable[[int, int, int, int], int]  # (query, candidate, round, step) -> ±1
InferFn = Callable[[int, int], "int | None"]  # (query, candidate) -> ±1 when the answers so far imply it


def round_slices(n_queries: int, every: float) -> list[slice]:
    """Split the query order into rounds of ``every`` × n_queries (the last one takes the rest)."""
    rounds = max(1, math.ceil(round(1.0 / every, 9)))
    bounds = [round(i * n_queries / rounds) for i in range(rounds + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(rounds)]


def nearest_candidates_all(features: np.ndarray, metric: Metric, queries: np.ndarray, ns: int,
                           chunk: int = 512) -> np.ndarray:
    """(len(queries), ns) pool indices of each query's ns nearest other pool images, nearest first."""
    n = len(features)
    if ns >= n:
        raise ValueError(f"dral.ns={ns} candidates need a pool of more than {ns} images, got {n}")
    out = np.empty((len(queries), ns), dtype=np.int64)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        D = metric.pairwise(features[q], features)
        D[np.arange(len(q)), q] = np.inf
        part = np.argpartition(D, ns, axis=1)[:, :ns]
        order = np.argsort(np.take_along_axis(D, part, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, 1)
    return out


def split_pairs(queries: np.ndarray, candidates: np.ndarray, answers: np.ndarray):
    """(positive pairs, negative pairs), each (P, 2), of parallel query / candidate / ±1 answer arrays."""
    pairs = np.stack([queries, candidates], 1) if len(queries) else np.empty((0, 2), dtype=np.int64)
    return pairs[answers > 0], pairs[answers < 0]


def known_answers(infer: InferFn, query: int, candidates: np.ndarray) -> dict[int, int]:
    """{candidate position: ±1} for the candidates whose answer is already known (an episode's ``known``)."""
    return {a: y for a, c in enumerate(candidates.tolist()) if (y := infer(query, c)) is not None}


@dataclass
class EpisodeStats:
    """What a round's episodes did, whatever the strategy: a trace to compare strategies by.

    ``returns``: the Eq. 9 return of each episode that asked something, discounted by ``gamma`` (the
    objective DRAL's agent maximises; the paper's 0.9 for every strategy, so rows compare);
    ``reward``: the sum of the Eq. 9 rewards; ``not_nearest``: questions that skipped a nearer open candidate.
    """

    gamma: float = 0.9
    episodes: int = 0
    questions: int = 0
    same: int = 0
    not_nearest: int = 0
    stopped: int = 0  # episodes the strategy ended before Kmax with open candidates left (dral.stop)
    reward: float = 0.0
    returns: list = field(default_factory=list)

    def row(self) -> dict:
        """Per-round columns of ``rounds.parquet``."""
        return {"episodes": self.episodes, "questions": self.questions, "same_answers": self.same,
                "mean_return": float(np.mean(self.returns)) if self.returns else float("nan"),
                "mean_reward": self.reward / self.questions if self.questions else float("nan"),
                "share_not_nearest": self.not_nearest / self.questions if self.questions else float("nan"),
                "episodes_stopped": self.stopped}


def run_episode(env: QueryEpisodeEnv, strategy: Strategy, query: int, candidates: np.ndarray,
                features: np.ndarray, metric: Metric, known: dict[int, int], answer_fn: AnswerFn,
                round_: int, infer: InferFn | None = None, stats: EpisodeStats | None = None) -> int:
    """One query: ask up to Kmax candidates; returns the number of questions asked.

    With ``infer(query, candidate) -> ±1 | None`` (what the answers so far imply), the candidates an
    answer settles are revealed to the state for free before the next choice, and never asked.
    ``stats`` accumulates the episode's trace (questions, "same" answers, Eq. 9 return, picks that
    skipped a nearer open candidate: candidates are in nearest-first order).
    """
    obs, mask = reset_episode(env, query, candidates, features, metric, known)
    ret, discount = 0.0, 1.0
    while mask.any() and env.questions_asked < env.kmax:
        if strategy.stop(env, obs, mask):
            if stats is not None:
                stats.stopped += 1
            break
        a = strategy.select(env, obs, mask)
        c = int(candidates[a])
        y = answer_fn(int(query), c, round_, env.questions_asked)
        if stats is not None:
            stats.questions += 1
            stats.same += int(y > 0)
            stats.not_nearest += int(a != int(np.argmax(mask)))
        next_obs, reward, done, _, info = env.step_with_answer(a, y)
        ret += discount * float(reward)
        if stats is not None:
            stats.reward += float(reward)
            discount *= stats.gamma
        implied = {}
        if infer is not None and not done:
            implied = implied_answers(infer, int(query), candidates, info["action_mask"])
            if implied:
                next_obs, info = env.reveal(implied)
                done = not info["action_mask"].any()
        if env.reward_kind == "links":  # the links this answer established, itself and by transitivity
            reward = float(y > 0) + sum(v > 0 for v in implied.values())
        strategy.observe(Transition(obs, a, float(reward), next_obs, info["action_mask"], done, y, int(query), c))
        obs, mask = next_obs, info["action_mask"]
        if done:
            break
    if stats is not None and env.questions_asked:
        stats.episodes += 1
        stats.returns.append(ret)
    return env.questions_asked
