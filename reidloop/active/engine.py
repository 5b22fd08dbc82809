"""The episode engine: one round's query episodes (DRAL Algorithm 1, inner loop), wherever they run.

:func:`run_round` steps the round's queries ``width`` episodes at a time, in lock-step:

1. idle episode slots take the next queries, in order, while the asker has answers left; candidates
   whose answer is already known are applied for free (``Answers.known_batch``);
2. the agent observes the previous lock-step's transitions, then, for each live episode in slot order,
   may end it (``Strategy.stop``) or picks a candidate (``Strategy.select``);
3. the asker answers the questions in that order (a pair asked twice in one lock-step is paid once;
   ``None`` once the budget is spent);
4. the slots apply the answers; the candidates an answer settles by transitivity (``infer_answers``) are
   revealed to their episodes for free; repeat until no episode is live.

The questions asked depend on the seed alone, never on timing. Everything runs through three handles:
the *slots* (:class:`LocalSlots` here; env-worker actors in ``services/env_workers.py``), the *agent*
(:class:`LocalAgent` around a strategy; the agent actor's proxy in ``services/agent_service.py``) and the
*asker* (:class:`Answers` around any oracle with ``known_batch`` / ``ask_batch`` / ``remaining``). The
in-process loop, the agent's warm start and the Ray loop run this one function; with ``width`` 1 they
ask exactly the same questions in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from ..config.schema import DralConfig
from ..dral.env import QueryEpisodeEnv, reset_episode
from ..dral.metric import Metric
from ..oracle import Question
from ..pair_knowledge import PairKnowledge, implied_answers
from ..strategies import Strategy, Transition


@dataclass(frozen=True)
class EpisodeView:
    """The part of a query episode a strategy may read (``Strategy.select(env, ...)`` uses these three)."""

    query: int
    candidates: np.ndarray  # (ns,) pool indices, nearest first
    distances: np.ndarray  # (ns+1, ns+1) over [q, candidates]


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


# ---- one episode slot: what an environment worker hosts
class EpisodeSlot:
    """One query episode at a time (``QueryEpisodeEnv``: state of Eq. 4–5, transition of Eq. 6–8, reward of
    Eq. 9) on the round's features and metric, and the observation the agent last saw."""

    def __init__(self, dral: DralConfig) -> None:
        self.env = QueryEpisodeEnv.from_config(dral)
        self.features: Optional[np.ndarray] = None
        self.metric: Optional[Metric] = None
        self.obs: Optional[np.ndarray] = None

    def set_round(self, features: np.ndarray, metric: Metric) -> None:
        self.features, self.metric = features, metric

    def reset(self, query: int, candidates: np.ndarray, known: dict[int, int]):
        """Start ``query``'s episode with ``known`` answers applied; (view, obs, mask)."""
        env = self.env
        self.obs, mask = reset_episode(env, query, candidates, self.features, self.metric, known)
        return EpisodeView(env.query, env.candidates, env.distances), self.obs, mask

    def apply(self, action: int, answer: int) -> tuple[Transition, int]:
        """The answer to candidate ``action``: the transition (Eq. 9 reward) and the questions asked so far."""
        env = self.env
        next_obs, reward, done, _, info = env.step_with_answer(action, answer)
        mask = info["action_mask"]
        t = Transition(self.obs, int(action), float(reward), next_obs, mask, bool(done) or not mask.any(),
                       int(answer), int(env.query), int(env.candidates[action]))
        self.obs = next_obs
        return t, env.questions_asked

    def reveal(self, known: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Apply answers implied by other answers (free: no question, no reward); the new (obs, mask)."""
        self.obs, info = self.env.reveal(known)
        return self.obs, info["action_mask"]


class Slots(Protocol):
    """``width`` episode slots; each call takes (slot index, arguments) items and returns their replies in order."""

    width: int

    def reset(self, items: list[tuple[int, int, np.ndarray, dict]]) -> list: ...
    def apply(self, items: list[tuple[int, int, int]]) -> list[tuple[Transition, int]]: ...
    def reveal(self, items: list[tuple[int, dict]]) -> list[tuple[np.ndarray, np.ndarray]]: ...


class LocalSlots:
    """``width`` episode slots in this process."""

    def __init__(self, dral: DralConfig, features: np.ndarray, metric: Metric, width: int = 1) -> None:
        self.slots = [EpisodeSlot(dral) for _ in range(width)]
        for s in self.slots:
            s.set_round(features, metric)
        self.width = width

    def reset(self, items):
        return [self.slots[i].reset(q, c, k) for i, q, c, k in items]

    def apply(self, items):
        return [self.slots[i].apply(a, y) for i, a, y in items]

    def reveal(self, items):
        return [self.slots[i].reveal(k) for i, k in items]


# ---- the agent
class Agent(Protocol):
    name: str

    def step(self, transitions: list[Transition], begins: list, views: list, obs: list, masks: list) -> list: ...
    def end(self, transitions: list[Transition], begins: list) -> None: ...


def agent_step(strategy: Strategy, transitions: Sequence[Transition], begins: Sequence, views: Sequence,
               obs_list: Sequence, masks: Sequence) -> list[Optional[int]]:
    """Observe ``transitions`` in order, then per live episode in order: the ``begin_episode`` calls due before
    it (``begins[i]``, a list of argument pairs: the queries started since the last step, this episode's last),
    and an action, or None where ``stop`` ends it. The agent actor runs this too."""
    for t in transitions:
        strategy.observe(t)
    actions: list[Optional[int]] = []
    for b, v, o, m in zip(begins, views, obs_list, masks):
        for args in b:
            strategy.begin_episode(*args)
        actions.append(None if strategy.stop(v, o, m) else int(strategy.select(v, o, m)))
    return actions


def agent_end(strategy: Strategy, transitions: Sequence[Transition], begins: Sequence) -> None:
    """The round's last transitions, then the ``begin_episode`` calls of queries started with nothing to ask."""
    for t in transitions:
        strategy.observe(t)
    for args in begins:
        strategy.begin_episode(*args)


class LocalAgent:
    """A strategy in this process, behind the agent handle the engine steps."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy, self.name = strategy, strategy.name

    def step(self, transitions, begins, views, obs_list, masks) -> list[Optional[int]]:
        return agent_step(self.strategy, transitions, begins, views, obs_list, masks)

    def end(self, transitions, begins) -> None:
        agent_end(self.strategy, transitions, begins)


# ---- the asker
class Answers:
    """A round's asker: the oracle's batched answers; with ``knowledge`` (``infer_answers``), "known" is all
    that the answers so far imply, and every new answer is learnt."""

    def __init__(self, oracle, knowledge: Optional[PairKnowledge] = None) -> None:
        self.oracle, self.knowledge = oracle, knowledge

    @property
    def remaining(self) -> Optional[int]:
        return self.oracle.remaining

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        if self.knowledge is not None:
            return [[self.knowledge.infer(q, int(c)) for c in cands] for q, cands in requests]
        return self.oracle.known_batch(requests)

    def ask_batch(self, questions: list[Question], strategy: str) -> list[Optional[int]]:
        answers = self.oracle.ask_batch(questions, strategy) if questions else []
        if self.knowledge is not None:
            for (q, c, _, _), y in zip(questions, answers):
                if y is not None:
                    self.knowledge.add(q, c, y)
        return answers


# ---- the engine
@dataclass
class _Episode:
    """The driver's view of one slot's live episode."""

    query: int
    candidates: np.ndarray
    view: object
    obs: np.ndarray
    mask: np.ndarray
    begins: list  # begin_episode's arguments due before its first choice (see agent_step)
    asked: int = 0
    ret: float = 0.0
    discount: float = 1.0


def run_round(slots: Slots, agent: Agent, asker: Answers, queries: np.ndarray, cands: np.ndarray, round_: int,
              kmax: int, *, reward_kind: str = "eq9", stats: Optional[EpisodeStats] = None,
              answers_left: Optional[Callable[[], int]] = None, queries_after: int = 0,
              progress: Optional[Callable[[int], None]] = None) -> int:
    """Ask ``queries`` (their nearest candidates ``cands``, nearest first); returns how many were browsed: all
    of them unless the asker's answers ran out (the query whose episode it cut counts as browsed).

    ``answers_left()`` and ``queries_after`` (the queries of later rounds) pace ``Strategy.begin_episode``;
    ``stats`` accumulates the round's trace; with ``reward_kind`` "links" the agent learns the number of links
    an answer established (itself and by transitivity) instead of Eq. 9; ``progress(browsed)`` after each start.
    """
    infer = asker.knowledge.infer if asker.knowledge is not None else None
    gamma = stats.gamma if stats is not None else 1.0
    live: dict[int, _Episode] = {}
    transitions: list[Transition] = []
    begins: list[tuple[int, int]] = []  # of started queries not yet handed to the agent
    started = 0
    while True:
        # 1. idle slots take the next queries, in order, while answers are left
        idle = [i for i in range(slots.width) if i not in live]
        while idle and started < len(queries) and asker.remaining != 0:
            batch = list(zip(idle, range(started, min(started + len(idle), len(queries)))))
            known = asker.known_batch([(int(queries[j]), cands[j].tolist()) for _, j in batch])
            replies = slots.reset([(i, int(queries[j]), cands[j], {a: y for a, y in enumerate(k) if y is not None})
                                   for (i, j), k in zip(batch, known)])
            for (i, j), (view, obs, mask) in zip(batch, replies):
                started += 1
                begins.append((answers_left() if answers_left is not None else 0,
                               len(queries) - j + queries_after))
                if mask.any():
                    live[i], begins = _Episode(int(queries[j]), cands[j], view, obs, mask, begins), []
            if progress is not None:
                progress(started)
            idle = [i for i in range(slots.width) if i not in live]
        if not live:
            break
        # 2. the agent learns the last answers, then acts (or stops) for each live episode, in slot order
        order = sorted(live)
        eps = [live[i] for i in order]
        actions = agent.step(transitions, [e.begins for e in eps], [e.view for e in eps], [e.obs for e in eps],
                             [e.mask for e in eps])
        transitions = []
        asking = []
        for i, e, a in zip(order, eps, actions):
            e.begins = []
            if a is None:  # the strategy ended the episode before Kmax
                if stats is not None:
                    stats.stopped += 1
                _finish(live.pop(i), stats)
            else:
                asking.append((i, e, int(a)))
        if not asking:
            continue
        # 3. the questions, answered in order (None: the budget is spent)
        answers = asker.ask_batch([(e.query, int(e.candidates[a]), round_, e.asked) for _, e, a in asking],
                                  agent.name)
        paid = [(i, e, a, y) for (i, e, a), y in zip(asking, answers) if y is not None]
        # 4. the slots apply them; the candidates an answer settles are revealed for free
        applied = slots.apply([(i, a, y) for i, _, a, y in paid]) if paid else []
        stepped, reveal = [], []
        for (i, e, a, y), (t, asked) in zip(paid, applied):
            if stats is not None:
                stats.questions += 1
                stats.same += int(y > 0)
                stats.not_nearest += int(a != int(np.argmax(e.mask)))
                stats.reward += t.reward
            e.ret += e.discount * t.reward
            e.discount *= gamma
            e.obs, e.mask, e.asked = t.next_obs, t.next_mask, asked
            implied = implied_answers(infer, e.query, e.candidates, t.next_mask) \
                if infer is not None and not t.done else {}
            if implied:
                reveal.append((i, implied))
            if reward_kind == "links":  # the links this answer established, itself and by transitivity
                t.reward = float(y > 0) + sum(v > 0 for v in implied.values())
            stepped.append((i, e, t))
        revealed = dict(zip([i for i, _ in reveal], slots.reveal(reveal))) if reveal else {}
        for i, e, t in stepped:
            if i in revealed:
                e.obs, e.mask = revealed[i]
                t.next_obs, t.next_mask, t.done = e.obs, e.mask, not e.mask.any()
            transitions.append(t)
            if t.done or e.asked >= kmax:
                _finish(live.pop(i), stats)
        if len(paid) < len(asking):  # the budget is spent: the agent still learns every answered question
            break
    agent.end(transitions, begins)
    return started


def _finish(e: _Episode, stats: Optional[EpisodeStats]) -> None:
    if stats is not None and e.asked:
        stats.episodes += 1
        stats.returns.append(e.ret)
