"""The acting-and-learning agent as a Ray actor: any strategy of ``reidloop.strategies`` behind one handle.

The environment workers' states (observation, action mask and an ``EpisodeView`` with what strategies
read of an episode: ``query``, ``candidates``, ``distances``) reach the agent, which answers with
actions (``select`` of DRAL Algorithm 1) and learns from the answered transitions (reward of Eq. 9,
next state of Eq. 6–8) in the order it is given them, so its replay and RNG evolve exactly as in the
one-process loop.

Every reply carries the actor's *incarnation* (a fresh id per process): after a crash Ray restarts
the actor empty, and the driver, seeing a new incarnation, restores the round-start snapshot and
replays the round from the answer log (``services/ray_loop.py``) instead of learning on from a
blank agent.
"""
from __future__ import annotations

import os
import uuid
from typing import Optional

import numpy as np
import ray
import torch

from reidloop import atomic
from reidloop.active.warmstart import warm_start
from reidloop.config import DralConfig
from reidloop.strategies import RoundContext, Strategy, Transition, build_strategy

from .ray_calls import wait
from .env_workers import EpisodeView, LostActorState, Step, call_when_up


@ray.remote(num_cpus=0)
class AgentService:
    """Hosts one strategy; ``step`` = observe the last answered transitions, then select the next actions."""

    def __init__(self, strategy: str, dral: DralConfig, seed: int) -> None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.strategy: Strategy = build_strategy(strategy, dral, seed=seed)
        self.incarnation = uuid.uuid4().hex

    def info(self) -> dict:
        s = self.strategy
        return {"name": s.name, "asks_questions": s.asks_questions, "finetune": s.finetune,
                "warm_starts": s.warm_starts, "incarnation": self.incarnation}

    def warm_start(self, features: np.ndarray, pids: np.ndarray, dral: DralConfig, passes: int, every: float,
                   seed: int) -> tuple[str, dict]:
        """``reidloop.active.warmstart.warm_start`` on the hosted strategy; its stats as a dict."""
        stats = warm_start(self.strategy, np.array(features), np.asarray(pids), dral, passes, every, seed=seed)
        return self.incarnation, stats.to_dict()

    def begin_round(self, round_: int, features_metric: tuple, pos_pairs: np.ndarray,
                    neg_pairs: np.ndarray) -> str:
        features, metric = features_metric
        self.strategy.begin_round(RoundContext(round_, features, metric, pos_pairs, neg_pairs))
        return self.incarnation

    def select_batch(self, views: list[EpisodeView], obs_list: list[np.ndarray],
                     masks: list[np.ndarray]) -> tuple[str, list[int]]:
        """One action per episode, chosen in the given order (the strategy's RNG advances in that order).

        Arrays arrive read-only (zero-copy from the object store); torch gets writable copies."""
        return self.incarnation, [int(self.strategy.select(v, np.array(o), m))
                                  for v, o, m in zip(views, obs_list, masks)]

    def observe_batch(self, steps: list[Step]) -> str:
        for s in steps:
            self.strategy.observe(Transition(s.obs, s.action, s.reward, s.next_obs, s.next_mask, s.done,
                                             s.answer, s.query, s.candidate))
        return self.incarnation

    def step(self, steps: list[Step], views: list[EpisodeView], obs_list: list[np.ndarray],
             masks: list[np.ndarray]) -> tuple[str, list[int]]:
        """``observe_batch`` then ``select_batch`` in one call (one round trip per lock-step)."""
        self.observe_batch(steps)
        return self.select_batch(views, obs_list, masks)

    def state_dict(self) -> tuple[str, dict]:
        return self.incarnation, self.strategy.state_dict()

    def load_state_dict(self, state: dict) -> str:
        self.strategy.load_state_dict(state)
        return self.incarnation

    def save(self, path: str) -> str:
        atomic.torch_save(self.strategy.state_dict(), path)
        return self.incarnation

    def load(self, path: str) -> str:
        self.strategy.load_state_dict(torch.load(path, weights_only=True))
        return self.incarnation


class RemoteStrategy:
    """Driver-side stand-in for the strategy living in an :class:`AgentService` actor.

    Offers what ``ActiveLearningLoop.run`` uses of a Strategy (``name``, ``asks_questions``,
    ``finetune``, ``begin_round``, ``state_dict``, ``load_state_dict``) plus the batched calls of
    the lock-step. Every reply is checked against the incarnation this proxy expects, so a restarted
    (empty) agent is never mistaken for the one that learnt the round so far.
    """

    def __init__(self, handle, timeout_s: float = 600.0, task_timeout_s: float = 7200.0) -> None:
        self.handle, self.timeout_s, self.task_timeout_s = handle, timeout_s, task_timeout_s
        info = wait(handle.info.remote(), timeout_s, "the agent actor.info")
        self.name: str = info["name"]
        self.asks_questions: bool = info["asks_questions"]
        self.finetune: str = info["finetune"]
        self.warm_starts: bool = info["warm_starts"]
        self.incarnation: str = info["incarnation"]
        self.context_ref: Optional[ray.ObjectRef] = None  # this round's (features, metric), put once
        self._context: Optional[RoundContext] = None
        self._round_start: Optional[dict] = None

    def _call(self, method, *args, timeout_s: Optional[float] = None):
        reply = wait(method.remote(*args), timeout_s or self.timeout_s, f"the agent actor.{method._method_name}")
        incarnation, value = reply if isinstance(reply, tuple) else (reply, None)
        if incarnation != self.incarnation:
            raise LostActorState("the agent actor was restarted and lost its state")
        return value

    # ---- the Strategy surface used by ActiveLearningLoop.run
    def begin_round(self, ctx: RoundContext) -> None:
        """Snapshot the agent (for recovery), put (features, metric) once, and start the round."""
        self._round_start = self.state_dict()
        self._context = ctx
        self.context_ref = ray.put((ctx.features, ctx.metric))
        self._call(self.handle.begin_round, ctx.round, self.context_ref, ctx.pos_pairs, ctx.neg_pairs)

    def state_dict(self) -> dict:
        return self._call(self.handle.state_dict)

    def load_state_dict(self, state: dict) -> None:
        self._call(self.handle.load_state_dict, state)

    def warm_start(self, features: np.ndarray, pids: np.ndarray, dral: DralConfig, passes: int, every: float,
                   seed: int) -> dict:
        return self._call(self.handle.warm_start, features, pids, dral, passes, every, seed,
                          timeout_s=self.task_timeout_s)

    # ---- lock-step
    def step(self, steps: list[Step], views: list[EpisodeView], obs_list, masks) -> list[int]:
        return self._call(self.handle.step, steps, views, obs_list, masks)

    def observe_batch(self, steps: list[Step]) -> None:
        if steps:
            self._call(self.handle.observe_batch, steps)

    def context_for(self, features: np.ndarray, metric) -> Optional[ray.ObjectRef]:
        """The ref of this round's (features, metric) if the round began with these very objects."""
        ctx = self._context
        return self.context_ref if ctx is not None and ctx.features is features and ctx.metric is metric else None

    def restore_round_start(self) -> None:
        """After a restart: adopt the new incarnation, reload the round-start snapshot, begin the round again."""
        if self._round_start is None or self._context is None:
            raise LostActorState("the agent was lost before its first round began; nothing to restore")
        self.incarnation = call_when_up(self.handle.info, call_timeout_s=self.timeout_s)["incarnation"]
        self.load_state_dict(self._round_start)
        ctx = self._context
        self._call(self.handle.begin_round, ctx.round, self.context_ref, ctx.pos_pairs, ctx.neg_pairs)
