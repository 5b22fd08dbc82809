"""The DRAL agent π (paper §3.2, Algorithm 1): a deep Q-network over the sparse similarity state.

Q*(S_t, A_t) = max_π E[R_t + γR_{t+1} + γ²R_{t+2} + … | π, S_t, A_t] (Eq. 10) is approximated by an MLP
(paper: three FC-256 layers, lr 2e-2) trained by one-step Q-learning from a uniform replay buffer,
with a target network for the bootstrap term. An action g_k may be chosen once per query (§3.2.1),
so acting and bootstrapping take the maximum over the still-valid actions only (a boolean mask).
All randomness comes from generators owned by the agent, so a seed fixes every choice and a saved
agent continues exactly as one that was never stopped.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import torch_save
from ..config.schema import DralConfig

FORMAT = "reidloop.dral.DQNAgent/1"
GRAD_CLIP = 10.0


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default init drawn from ``gen`` instead of the global RNG."""
    layer = torch.nn.utils.skip_init(nn.Linear, n_in, n_out)
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
    bound = 1.0 / math.sqrt(n_in)
    nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return layer


def q_network(obs_dim: int, n_actions: int, hidden: int, layers: int, gen: torch.Generator) -> nn.Sequential:
    """``layers`` × (Linear(…, hidden) + ReLU), then a linear head with one Q value per action."""
    mods: list[nn.Module] = []
    width = obs_dim
    for _ in range(layers):
        mods += [_linear(width, hidden, gen), nn.ReLU()]
        width = hidden
    mods.append(_linear(width, n_actions, gen))
    return nn.Sequential(*mods)


class ReplayBuffer:
    """Uniform experience replay: preallocated numpy ring buffer of (s, a, r, s', mask', done)."""

    FIELDS = ("obs", "action", "reward", "next_obs", "next_mask", "done")

    def __init__(self, capacity: int, obs_dim: int, n_actions: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros(capacity, np.int64)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_mask = np.zeros((capacity, n_actions), np.bool_)
        self.done = np.zeros(capacity, np.bool_)
        self.pos = 0
        self.size = 0

    def add(self, obs, action, reward, next_obs, next_mask, done) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.next_mask[i], self.done[i] = next_obs, next_mask, done
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int,
               out: Optional[dict[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly with replacement. ``out``: arrays of ``n`` rows per field to fill
        (reused by the caller, so a large batch is not allocated and page-faulted in anew at every step)."""
        idx = rng.integers(0, self.size, size=n)
        if out is None:
            return {f: getattr(self, f)[idx] for f in self.FIELDS}
        for f in self.FIELDS:  # mode="clip": no bounds-check buffer (idx < size <= capacity)
            np.take(getattr(self, f), idx, axis=0, out=out[f], mode="clip")
        return out

    def batch_buffers(self, n: int) -> dict[str, np.ndarray]:
        """Empty arrays for ``sample(…, out=)`` of ``n`` transitions."""
        return {f: np.empty((n,) + getattr(self, f).shape[1:], getattr(self, f).dtype) for f in self.FIELDS}

    def state_dict(self) -> dict:
        sd: dict = {f: torch.from_numpy(getattr(self, f)[: self.size].copy()) for f in self.FIELDS}
        sd.update(capacity=self.capacity, pos=self.pos, size=self.size)
        return sd

    def load_state_dict(self, sd: dict) -> None:
        if sd["capacity"] != self.capacity:
            raise ValueError(f"replay_size: checkpoint has {sd['capacity']}, config has {self.capacity}")
        n = int(sd["size"])
        for f in self.FIELDS:
            getattr(self, f)[:n] = sd[f].numpy()
        self.pos, self.size = int(sd["pos"]), n


def q_target(reward: torch.Tensor, next_q: torch.Tensor, live: torch.Tensor, gamma: float,
             price: float | None = None) -> torch.Tensor:
    """Eq. 10's target r + γ · max Q'(s', ·) (0 where s' is terminal). With ``price`` (``dral.stop``): every
    answer costs ``price`` and stopping is always possible and worth 0, so r - price + γ · max(0, max Q')."""
    if price is not None:
        reward, next_q = reward - price, next_q.clamp(min=0.0)
    return reward + gamma * torch.where(live, next_q, torch.zeros_like(next_q))


class DQNAgent:
    """ε-greedy deep Q-learning agent over masked discrete actions (the ns gallery candidates)."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: DralConfig, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if obs_dim < 1 or n_actions < 1:
            raise ValueError(f"obs_dim/n_actions: {(obs_dim, n_actions)!r} must be >= 1")
        if seed < 0:
            raise ValueError(f"seed: {seed!r} must be >= 0")
        if cfg.target_sync < 1 or cfg.epsilon_decay_steps < 0:
            raise ValueError(f"target_sync/epsilon_decay_steps: {(cfg.target_sync, cfg.epsilon_decay_steps)!r} "
                             "need target_sync >= 1 and epsilon_decay_steps >= 0")
        self.obs_dim, self.n_actions, self.cfg = obs_dim, n_actions, cfg
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        self.online = q_network(obs_dim, n_actions, cfg.hidden, cfg.layers, gen).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.online.parameters(), lr=cfg.policy_lr, momentum=0.9)
        else:
            self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.policy_lr)
        self.replay = ReplayBuffer(cfg.replay_size, obs_dim, n_actions)
        # dral.stop: the price of an answer (subtracted from every reward at learning time, so the whole
        # replay is valued at today's price) and stopping worth 0 in the bootstrap
        self.price = 0.0
        self.act_steps = 0  # act(explore=True) calls so far: drives the ε schedule
        self.learn_steps = 0  # gradient steps so far: drives the target sync
        self._rng = np.random.default_rng(seed)
        self._batch: dict[str, np.ndarray] = {}  # sample() staging arrays, reused by every step

    # ---------------------------------------------------------------- acting
    @property
    def epsilon(self) -> float:
        """ε for the next exploring act: linear from epsilon_start to epsilon_end over epsilon_decay_steps."""
        c = self.cfg
        frac = 1.0 if c.epsilon_decay_steps == 0 else min(self.act_steps / c.epsilon_decay_steps, 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(S, ·) of the online network for one observation (obs_dim,) or a batch (B, obs_dim)."""
        x = self._check_obs(obs, "obs", batch_ok=True)
        with torch.no_grad():
            return self.online(torch.as_tensor(x, device=self.device)).cpu().numpy()

    def act(self, obs: np.ndarray, mask: np.ndarray, explore: bool = True, q: np.ndarray | None = None) -> int:
        """ε-greedy action among ``mask``-valid actions; greedy (argmax of valid Q) when explore is False.
        ``q``: Q(obs, ·) when the caller already computed it (not computed again)."""
        valid = self._check_mask(mask, "mask")
        choices = np.flatnonzero(valid)
        if choices.size == 0:
            raise ValueError("mask: no valid action to choose from")
        if explore:
            eps = self.epsilon
            self.act_steps += 1
            if self._rng.random() < eps:
                return int(self._rng.choice(choices))
        q = self.q_values(obs) if q is None else q
        return int(choices[np.argmax(q[choices])])

    # ---------------------------------------------------------------- learning
    def remember(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
                 next_mask: np.ndarray, done: bool) -> None:
        """Store one transition; a next state without valid actions is treated as terminal."""
        if not 0 <= action < self.n_actions:
            raise ValueError(f"action: {action!r} is not in [0, {self.n_actions})")
        if not math.isfinite(reward):
            raise ValueError(f"reward: {reward!r} must be finite")
        self.replay.add(self._check_obs(obs, "obs"), action, reward, self._check_obs(next_obs, "next_obs"),
                        self._check_mask(next_mask, "next_mask"), bool(done))

    def learn(self) -> Optional[float]:
        """One learner call of the schedule (``dral.learn_*``): ``learn_updates`` Huber-loss Q-learning steps
        (Eq. 10) on replay batches of ``update_batch`` transitions; their mean loss, or None until batch_size
        transitions exist. The default schedule: one step on batch_size transitions.

        Target: r + γ · max_{a' valid in s'} Q_target(s', a'), with the bootstrap 0 when done. With
        ``dral.stop``: r - price + γ · max(0, max_{a'} Q_target(s', a')) (stopping is always possible).
        The target network is refreshed every ``target_sync`` answers' worth of steps (:meth:`_sync_due`).
        """
        c = self.cfg
        if self.replay.size < c.batch_size:
            return None
        total = self._step(c.update_batch)
        for _ in range(c.learn_updates - 1):
            total = total + self._step(c.update_batch)
        return total.item() / c.learn_updates  # one read of the loss per call, not per step

    def _step(self, n: int) -> torch.Tensor:
        """One gradient step on ``n`` replay transitions; its (detached) loss."""
        if len(self._batch.get("action", ())) != n:
            self._batch = self.replay.batch_buffers(n)
        batch = self.replay.sample(self._rng, n, out=self._batch)
        b = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}  # CPU: no copy
        q = self.online(b["obs"]).gather(1, b["action"][:, None]).squeeze(1)
        with torch.no_grad():
            next_q = self.target(b["next_obs"]).masked_fill(~b["next_mask"], -torch.inf).amax(1)
            live = b["next_mask"].any(1) & ~b["done"]
            target = q_target(b["reward"], next_q, live, self.cfg.gamma,
                              price=self.price if self.cfg.stop else None)
        loss = F.smooth_l1_loss(q, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.online.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.learn_steps += 1
        if self._sync_due():
            self.sync_target()
        return loss.detach()

    def _sync_due(self) -> bool:
        """Whether the step just taken crossed a multiple of ``target_sync`` answers learnt from: a step stands
        for learn_every / learn_updates answers, so the copies stay the same number of answers apart whatever
        the schedule (the default: every target_sync steps, as with one step per answer)."""
        c = self.cfg
        per = c.target_sync * c.learn_updates
        return self.learn_steps * c.learn_every // per > (self.learn_steps - 1) * c.learn_every // per

    def sync_target(self) -> None:
        self.target.load_state_dict(self.online.state_dict())

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: nets, optimiser, counters, RNG and replay contents."""
        return {
            "format": FORMAT, "obs_dim": self.obs_dim, "n_actions": self.n_actions,
            "hidden": self.cfg.hidden, "layers": self.cfg.layers,
            "online": self.online.state_dict(), "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "act_steps": self.act_steps, "learn_steps": self.learn_steps, "price": self.price,
            "rng": json.dumps(self._rng.bit_generator.state),  # 128-bit ints kept exact as JSON text
            "replay": self.replay.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("format") != FORMAT:
            raise ValueError(f"not a DQNAgent state (format {sd.get('format')!r}, expected {FORMAT!r})")
        for name, mine in (("obs_dim", self.obs_dim), ("n_actions", self.n_actions),
                           ("hidden", self.cfg.hidden), ("layers", self.cfg.layers)):
            if sd[name] != mine:
                raise ValueError(f"{name}: checkpoint has {sd[name]}, this agent has {mine}")
        self.online.load_state_dict(sd["online"])
        self.target.load_state_dict(sd["target"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.act_steps, self.learn_steps = int(sd["act_steps"]), int(sd["learn_steps"])
        self.price = float(sd.get("price", 0.0))
        self._rng.bit_generator.state = json.loads(sd["rng"])
        self.replay.load_state_dict(sd["replay"])

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (temporary file in the same folder, then os.replace)."""
        torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, cfg: DralConfig, obs_dim: Optional[int] = None,
             n_actions: Optional[int] = None, device: str | torch.device = "cpu") -> "DQNAgent":
        """Restore an agent saved by :meth:`save`; ``obs_dim``/``n_actions``, when given, must match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"DQN agent checkpoint {path} does not exist")
        try:
            sd = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # torch raises several types for truncated / foreign files
            raise ValueError(f"DQN agent checkpoint {path} is corrupt or unreadable: {e}") from e
        if not isinstance(sd, dict) or sd.get("format") != FORMAT:
            raise ValueError(f"{path} is not a DQNAgent checkpoint")
        for name, want in (("obs_dim", obs_dim), ("n_actions", n_actions)):
            if want is not None and sd[name] != want:
                raise ValueError(f"DQN agent checkpoint {path}: {name} is {sd[name]}, expected {want}")
        agent = cls(sd["obs_dim"], sd["n_actions"], cfg, device=device)
        try:
            agent.load_state_dict(sd)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ValueError(f"DQN agent checkpoint {path}: {e}") from e
        return agent

    # ---------------------------------------------------------------- validation
    def _check_obs(self, obs, name: str, batch_ok: bool = False) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if not (x.shape == (self.obs_dim,) or (batch_ok and x.ndim == 2 and x.shape[1] == self.obs_dim)):
            raise ValueError(f"{name}: shape {x.shape} does not match obs_dim={self.obs_dim}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or inf")
        return x

    def _check_mask(self, mask, name: str) -> np.ndarray:
        m = np.asarray(mask)
        if m.dtype != np.bool_ or m.shape != (self.n_actions,):
            raise ValueError(f"{name}: expected a bool array of shape ({self.n_actions},), "
                             f"got {m.dtype} {m.shape}")
        return m
