"""The acting-and-learning agent as a Ray actor: any strategy of ``reidloop.strategies`` behind one handle.

The episode engine (``reidloop.active.engine.run_round``, in the driver) sends each lock-step's answered
transitions and live episodes' states (observation, action mask and an ``EpisodeView``: ``query``,
``candidates``, ``distances``); the actor runs ``engine.agent_step`` on them, as the in-process loop does,
so the agent's replay and RNG evolve exactly as in one process.

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
from reidloop.config import AdaptConfig, DralConfig
from reidloop.active.engine import agent_end, agent_step
from reidloop.strategies import RoundContext, Strategy, Transition, build_strategy

from .env_workers import LostActorState, call_when_up
from .ray_calls import wait


@ray.remote(num_cpus=0)
class AgentService:
    """Hosts one strategy; ``step`` = observe the last answered transitions, then select the next actions."""

    def __init__(self, strategy: str, dral: DralConfig, seed: int, adapt: Optional[AdaptConfig] = None) -> None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.strategy: Strategy = build_strategy(strategy, dral, seed=seed, adapt=adapt)
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
                    neg_pairs: np.ndarray, cameras: Optional[np.ndarray] = None) -> str:
        features, metric = features_metric
        self.strategy.begin_round(RoundContext(round_, features, metric, pos_pairs, neg_pairs, cameras=cameras))
        return self.incarnation

    def step(self, transitions: list[Transition], begins: list, views: list, obs_list: list[np.ndarray],
             masks: list[np.ndarray]) -> tuple[str, list]:
        """``engine.agent_step``: learn the last transitions, then act for each live episode (one round trip per
        lock-step). Arrays arrive read-only (zero-copy from the object store); torch gets writable copies."""
        return self.incarnation, agent_step(self.strategy, transitions, begins, views,
                                            [np.array(o) for o in obs_list], masks)

    def end(self, transitions: list[Transition], begins: list) -> str:
        agent_end(self.strategy, transitions, begins)
        return self.incarnation

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
    ``finetune``, ``begin_round``, ``state_dict``, ``load_state_dict``) and is the episode engine's agent
    handle (``step``, ``end``). Every reply is checked against the incarnation this proxy expects, so a restarted
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
        self._call(self.handle.begin_round, ctx.round, self.context_ref, ctx.pos_pairs, ctx.neg_pairs, ctx.cameras)

    def state_dict(self) -> dict:
        return self._call(self.handle.state_dict)

    def load_state_dict(self, state: dict) -> None:
        self._call(self.handle.load_state_dict, state)

    def warm_start(self, features: np.ndarray, pids: np.ndarray, dral: DralConfig, passes: int, every: float,
                   seed: int) -> dict:
        return self._call(self.handle.warm_start, features, pids, dral, passes, every, seed,
                          timeout_s=self.task_timeout_s)

    # ---- the engine's agent handle (reidloop.active.engine.Agent)
    def step(self, transitions: list[Transition], begins: list, views: list, obs_list, masks) -> list:
        return self._call(self.handle.step, transitions, begins, views, obs_list, masks)

    def end(self, transitions: list[Transition], begins: list) -> None:
        if transitions or begins:
            self._call(self.handle.end, transitions, begins)

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
        self._call(self.handle.begin_round, ctx.round, self.context_ref, ctx.pos_pairs, ctx.neg_pairs, ctx.cameras)
