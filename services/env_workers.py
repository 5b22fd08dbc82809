"""Environment workers: the episode engine's slots (``reidloop.active.engine``) as Ray actors.

Each :class:`EnvWorker` hosts episode slots (``EpisodeSlot``: a DRAL query episode, state of Eq. 4–5,
transition of Eq. 6–8, reward of Eq. 9) on the round's pool features and metric (one object-store copy per
round, shared with the agent). :class:`RemoteSlots` is the engine's ``Slots`` handle: ``episodes_in_flight``
slots spread over the W workers; each lock-step's resets, answers and reveals go to the workers in
parallel, so the episodes' arithmetic runs at once and the fixed cost of a step (actor round trips, one
durable log write) is shared. How many episodes are in flight decides the questions; how many workers
run them does not. The engine itself
(``run_round``) runs in the driver, as for the in-process loop: the same questions, in the same order, for
the same seed and config.

Every reply carries the worker's *incarnation* (a fresh id per process): a worker that Ray restarted lost
its episode, and :class:`LostActorState` tells the driver to replay the round from the answer log.

This module is imported by the worker processes: it needs numpy and gymnasium, never torch.
"""
from __future__ import annotations

import os
import time
import uuid

import ray
from ray.exceptions import ActorUnavailableError

from reidloop.active.engine import EpisodeSlot
from reidloop.config import DralConfig

from .ray_calls import wait


class LostActorState(RuntimeError):
    """An actor was restarted (new incarnation): its in-memory state of this round is gone."""


@ray.remote(num_cpus=0)
class EnvWorker:
    """Episode slots of the engine (those ``RemoteSlots`` maps to this worker); every reply is (incarnation, value)."""

    def __init__(self, dral: DralConfig) -> None:
        self.dral = dral
        self.slots: dict[int, EpisodeSlot] = {}
        self.features_metric: tuple = (None, None)
        self.incarnation = uuid.uuid4().hex

    def set_round(self, features_metric: tuple) -> str:
        self.features_metric = features_metric
        for slot in self.slots.values():
            slot.set_round(*features_metric)
        return self.incarnation

    def _slot(self, i: int) -> EpisodeSlot:
        if i not in self.slots:
            self.slots[i] = EpisodeSlot(self.dral)
            self.slots[i].set_round(*self.features_metric)
        return self.slots[i]

    def reset(self, slot: int, query: int, candidates, known: dict[int, int]) -> tuple:
        return self.incarnation, self._slot(slot).reset(query, candidates, known)

    def apply(self, slot: int, action: int, answer: int) -> tuple:
        return self.incarnation, self._slot(slot).apply(action, answer)

    def reveal(self, slot: int, known: dict[int, int]) -> tuple:
        return self.incarnation, self._slot(slot).reveal(known)

    def pid(self) -> int:
        return os.getpid()


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


class RemoteSlots:
    """The engine's ``Slots`` over env workers: ``width`` slots, slot i on worker i mod W. Giving the workers the
    round's (features, metric) ref (one object-store copy, shared with the agent) fixes the incarnations that
    every reply must match."""

    def __init__(self, workers: list, features_metric_ref, width: int, timeout_s: float = 600.0) -> None:
        if not workers:
            raise ValueError("RemoteSlots: no env workers (ray.env_workers must be >= 1)")
        self.workers, self.width, self.timeout_s = workers, width, timeout_s
        self.incarnations = [call_when_up(w.set_round, features_metric_ref, call_timeout_s=timeout_s)
                             for w in workers]

    def _call(self, method: str, items: list) -> list:
        n = len(self.workers)
        refs = [getattr(self.workers[i % n], method).remote(i, *args) for i, *args in items]
        out = []
        for (i, *_), (incarnation, value) in zip(items, wait(refs, self.timeout_s, f"an env worker.{method}")):
            if incarnation != self.incarnations[i % n]:
                raise LostActorState("an environment worker was restarted and lost its episode")
            out.append(value)
        return out

    def reset(self, items):
        return self._call("reset", items)

    def apply(self, items):
        return self._call("apply", items)

    def reveal(self, items):
        return self._call("reveal", items)
