"""DRAL — the deep reinforced active learner (paper §3.2, Algorithm 1).

The state is the κ-reciprocal similarity graph of the query episode (the env's
observation), the action a candidate position, the reward the hard-triplet
uncertainty of Eq. 9; a DQN (three FC-256 layers) learns Q* of Eq. 10 from every
answered question, through all rounds.
"""
from __future__ import annotations

import numpy as np

from ..config import DralConfig
from ..dral.agent import DQNAgent
from .base import Strategy, Transition


class DralStrategy(Strategy):
    name = "dral"
    warm_starts = True

    def __init__(self, cfg: DralConfig, seed: int = 0) -> None:
        super().__init__(seed)
        self.cfg = cfg
        self.agent = DQNAgent(obs_dim=(cfg.ns + 1) ** 2 + cfg.ns, n_actions=cfg.ns, cfg=cfg, seed=seed)
        self.steps = 0
        self.losses: list[float] = []
        self.pace: float | None = None  # dral.stop: answers per query the current episode may spend
        self.episode_questions = 0
        self._q = None  # Q(obs, ·) from stop(), reused by the select() that follows it on the same obs

    def begin_episode(self, answers_left: int, queries_left: int) -> None:
        """``dral.stop``: settle the last episode's spending against its pace, then pace this one."""
        if not self.cfg.stop:
            return
        if self.pace is not None:
            drift = self.episode_questions - self.pace
            self.agent.price = max(0.0, self.agent.price + self.cfg.stop_pace_rate * drift)
        self.pace = answers_left / max(1, queries_left)
        self.episode_questions = 0

    def stop(self, env, obs: np.ndarray, mask: np.ndarray) -> bool:
        """``dral.stop``: no open candidate is worth the price of an answer (its learnt Q is below 0)."""
        if not self.cfg.stop:
            return False
        q = self.agent.q_values(obs)
        stopping = bool(q[mask].max() < 0.0)
        self._q = None if stopping else q
        return stopping

    def select(self, env, obs: np.ndarray, mask: np.ndarray) -> int:
        q, self._q = self._q, None
        return self.agent.act(obs, mask, explore=True, q=q)

    def observe(self, t: Transition) -> None:
        """Store the answer's transition; every ``learn_every`` answers, one learner call of the schedule
        (``DQNAgent.learn``: ``learn_updates`` steps of ``update_batch``). The Ray agent actor runs this too."""
        self.agent.remember(t.obs, t.action, t.reward, t.next_obs, t.next_mask, t.done)
        self.steps += 1
        self.episode_questions += 1
        if self.steps % self.cfg.learn_every == 0:
            loss = self.agent.learn()
            if loss is not None:
                self.losses.append(float(loss))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "agent": self.agent.state_dict(), "steps": self.steps,
                "pace": self.pace, "episode_questions": self.episode_questions}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.agent.load_state_dict(state["agent"])
        self.steps = int(state["steps"])
        self.pace = state.get("pace")
        self.episode_questions = int(state.get("episode_questions", 0))
