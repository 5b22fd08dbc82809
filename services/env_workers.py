"""Environment workers and the lock-step that feeds their query episodes to the one agent.

Each :class:`EnvWorker` actor holds the round's pool features and metric (one object-store copy per
round, shared with the agent) and steps one DRAL query episode at a time (``QueryEpisodeEnv``: state
of Eq. 4–5, transition of Eq. 6–8, reward of Eq. 9). :func:`run_lockstep` runs a round's queries on
W workers in lock-step, so the questions asked depend on the seed alone, never on timing:

1. idle workers reset the next queries in parallel (pairs already answered are applied for free);
2. the agent observes the previous step's transitions, then selects W actions, in worker order;
3. the labelling service answers the W questions in that order (a pair two episodes ask in the same
   step is paid once; the second gets the recorded answer free);
4. the workers apply the answers in parallel and return the transitions; candidates an answer settles
   by transitivity (``infer_answers``) are then revealed to their episodes for free; repeat.

With W = 1 this asks exactly what ``ActiveLearningLoop.ask_round`` asks in one process. The fixed
cost of a step (three actor round trips and one durable log write) is shared by the W episodes,
which is where W = 2 gains on one machine; the episode arithmetic itself runs in parallel.

This module is imported by the worker processes: it needs numpy and gymnasium, never torch.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError

from reidloop.config import DralConfig
from reidloop.dral.env import QueryEpisodeEnv, reset_episode
from reidloop.oracle import BudgetExhausted
from reidloop.pair_knowledge import implied_answers

from .ray_calls import wait


class LostActorState(RuntimeError):
    """An actor was restarted (new incarnation): its in-memory state of this round is gone."""


@dataclass(frozen=True)
class EpisodeView:
    """The part of a query episode a strategy may read (see ``Strategy.select``)."""

    query: int
    candidates: np.ndarray  # (ns,) pool indices, nearest first
    distances: np.ndarray  # (ns+1, ns+1) over [q, candidates]


@dataclass
class Step:
    """One answered question, the fields of ``reidloop.strategies.Transition`` in its order."""

    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    next_mask: np.ndarray
    done: bool
    answer: int
    query: int
    candidate: int


@dataclass
class Reset:
    incarnation: str
    view: EpisodeView
    obs: np.ndarray
    mask: np.ndarray


@dataclass
class Applied:
    incarnation: str
    step: Step
    asked: int  # questions asked in the episode so far
    done: bool


@ray.remote(num_cpus=0)
class EnvWorker:
    """Steps one query episode at a time on the round's features and metric."""

    def __init__(self, dral: DralConfig) -> None:
        self.env = QueryEpisodeEnv.from_config(dral)
        self.incarnation = uuid.uuid4().hex
        self.features: Optional[np.ndarray] = None
        self.metric = None
        self.obs: Optional[np.ndarray] = None

    def set_round(self, features_metric: tuple) -> str:
        self.features, self.metric = features_metric
        return self.incarnation

    def reset(self, query: int, candidates: np.ndarray, known: dict[int, int]) -> Reset:
        env = self.env
        self.obs, mask = reset_episode(env, query, candidates, self.features, self.metric, known)
        return Reset(self.incarnation, EpisodeView(env.query, env.candidates, env.distances), self.obs, mask)

    def apply(self, action: int, answer: int) -> Applied:
        env = self.env
        next_obs, reward, done, _, info = env.step_with_answer(action, answer)
        mask = info["action_mask"]
        step = Step(self.obs, int(action), float(reward), next_obs, mask, bool(done), int(answer),
                    int(env.query), int(env.candidates[action]))
        self.obs = next_obs
        return Applied(self.incarnation, step, env.questions_asked, bool(done) or not mask.any())

    def reveal(self, known: dict[int, int]) -> Reset:
        """Apply answers implied by other answers (free: no question, no reward); the new obs and mask."""
        env = self.env
        self.obs, info = env.reveal(known)
        return Reset(self.incarnation, EpisodeView(env.query, env.candidates, env.distances), self.obs,
                     info["action_mask"])

    def pid(self) -> int:
        return os.getpid()


@dataclass
class Slot:
    """One worker's current episode, as the driver tracks it."""

    worker: object
    incarnation: str = ""
    timeout_s: float = 600.0  # ray.call_timeout_s
    query: int = -1
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    view: Optional[EpisodeView] = None
    obs: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    asked: int = 0
    live: bool = False


def _checked(slot: Slot, reply):
    if reply.incarnation != slot.incarnation:
        raise LostActorState("an environment worker was restarted and lost its episode")
    return reply


def call_when_up(method, *args, timeout_s: float = 120.0, call_timeout_s: float = 600.0):
    """``ray.get(method.remote(*args))``, waiting up to ``timeout_s`` while Ray restarts the actor (calls
    without retries fail fast with ActorUnavailableError then); an actor that is gone for good still raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return wait(method.remote(*args), call_timeout_s, f"actor call {method._method_name}")
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def prepare_workers(workers: list, features_metric_ref, timeout_s: float = 600.0) -> list[Slot]:
    """Give every worker the round's (features, metric): one object-store copy, shared with the agent."""
    return [Slot(w, call_when_up(w.set_round, features_metric_ref, call_timeout_s=timeout_s), timeout_s)
            for w in workers]


def _refill(slots: list[Slot], queue: deque, queries: np.ndarray, cands: np.ndarray, asker) -> None:
    """Idle slots take the next queries, in slot order, until each holds a live episode or none is left."""
    while True:
        idle = [s for s in slots if not s.live]
        take = [(s, queue.popleft()) for s in idle[:len(queue)]]
        if not take:
            return
        known = asker.known_batch([(int(queries[i]), cands[i].tolist()) for _, i in take])
        replies = wait([s.worker.reset.remote(int(queries[i]), cands[i],
                                              {a: y for a, y in enumerate(k) if y is not None})
                        for (s, i), k in zip(take, known)], take[0][0].timeout_s, "an env worker.reset")
        for (s, i), reply in zip(take, replies):
            _checked(s, reply)
            s.query, s.candidates, s.view, s.obs, s.mask = int(queries[i]), cands[i], reply.view, reply.obs, reply.mask
            s.asked, s.live = 0, bool(reply.mask.any())


def _reveal_implied(answered: list[tuple[Slot, Step]], asker) -> None:
    """Reveal, for free, the candidates each live episode's answer settled (``asker.knowledge``), before the agent
    observes the step: its next state is the state after the reveal, as in ``reidloop.active.loop.run_episode``."""
    if asker.knowledge is None:
        return
    todo = []
    for s, step in answered:
        if s.live and (implied := implied_answers(asker.knowledge.infer, s.query, s.candidates, s.mask)):
            todo.append((s, step, implied))
    if not todo:
        return
    replies = wait([s.worker.reveal.remote(k) for s, _, k in todo], todo[0][0].timeout_s, "an env worker.reveal")
    for (s, step, _), reply in zip(todo, replies):
        _checked(s, reply)
        s.obs, s.mask = reply.obs, reply.mask
        step.next_obs, step.next_mask = reply.obs, reply.mask
        if not s.mask.any():
            step.done, s.live = True, False


def run_lockstep(slots: list[Slot], agent, asker, queries: np.ndarray, cands: np.ndarray, round_: int,
                 kmax: int) -> int:
    """Ask the round's queries (nearest candidates ``cands``) on the slots' workers; returns the questions put.

    ``agent`` is a ``RemoteStrategy``, ``asker`` answers ``known_batch`` / ``ask_batch`` (``RoundAsker``).
    Raises BudgetExhausted (after the agent has observed every answered question) when the budget runs out.
    """
    queue = deque(range(len(queries)))
    steps: list[Step] = []
    asked = 0
    while True:
        _refill(slots, queue, queries, cands, asker)
        live = [s for s in slots if s.live]
        if not live:
            break
        actions = agent.step(steps, [s.view for s in live], [s.obs for s in live], [s.mask for s in live])
        steps = []
        questions = [(s.query, int(s.candidates[a]), round_, s.asked) for s, a in zip(live, actions)]
        answers = asker.ask_batch(questions, agent.name)
        paid = [(s, a, y) for s, a, y in zip(live, actions, answers) if y is not None]
        replies = wait([s.worker.apply.remote(a, y) for s, a, y in paid], live[0].timeout_s,
                       "an env worker.apply") if paid else []
        for (s, _, _), reply in zip(paid, replies):
            _checked(s, reply)
            steps.append(reply.step)
            s.obs, s.mask, s.asked = reply.step.next_obs, reply.step.next_mask, reply.asked
            s.live = not reply.done and s.asked < kmax
        _reveal_implied([(s, st) for (s, _, _), st in zip(paid, steps)], asker)  # steps: this lock-step's
        asked += len(paid)
        if len(paid) < len(live):
            agent.observe_batch(steps)
            raise BudgetExhausted(f"annotation budget spent in round {round_}")
    agent.observe_batch(steps)
    return asked
