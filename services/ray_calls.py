"""Every ``ray.get`` the driver waits on is bounded, and an actor that keeps dying ends the job by name.

Actors restart at most ``ray.actor_max_restarts`` times and their calls are retried at most as often, so
an actor that crashes on every call exhausts its restarts instead of holding the driver forever; a call
with no reply within ``ray.call_timeout_s`` (``ray.task_timeout_s`` for feature extraction and the
agent's warm-up, whose length grows with the data) ends the job as well. Both end as :class:`ActorFailed`,
whose message names the actor and carries its last error.
"""
from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError


class ActorFailed(RuntimeError):
    """An actor (or remote task) of the run died for good, or did not answer in time."""


def wait(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get(refs)`` within ``timeout_s``; ActorFailed naming ``what`` when no reply comes."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise ActorFailed(f"{what}: no reply within {timeout_s:.0f} s (ray.call_timeout_s / ray.task_timeout_s); "
                          "the actor is hung or the cluster has no room to run it") from None


def died(exc: RayActorError, roles: dict[str, str], max_restarts: int) -> ActorFailed:
    """The error a job ends with when an actor is gone for good: which of ``roles`` (actor id → role) it was,
    and Ray's account of its last failure."""
    actor_id = getattr(exc, "actor_id", None)
    role = roles.get(actor_id, "an actor of the run") if actor_id else "an actor of the run"
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return ActorFailed(f"{role} died and was not restarted (ray.actor_max_restarts={max_restarts} spent, or it "
                       f"cannot start); its last error: {detail[:800]}")
