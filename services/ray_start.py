"""Start or join Ray: the one way this project's entry points get a Ray.

:func:`start_or_join` is used by ``services.ray_loop.connect`` (``trainers.run_job``), ``services.sweep``
(``trainers.sweep``), ``services.l2r_runs`` (``trainers.l2r_experiment``) and ``trainers.serve``:

* Ray already initialised in this process: nothing happens;
* an address (the argument, else ``$RAY_ADDRESS``, which ``ray job submit`` sets): ``ray.init(address=...)``
  joins that cluster, with that cluster's own token;
* else a new local Ray with token authentication (:func:`services.ray_auth.init_local`), never another
  Ray that happens to run on this machine.

The driver's ``OMP_NUM_THREADS``, the fault-injection variables of :func:`reidloop.crashpoints.fault_env`
(empty outside tests) and the caller's ``env_vars`` (which win) go to every worker as the runtime env's
``env_vars`` — except inside a job submitted with ``ray job submit`` (``RAY_JOB_CONFIG_JSON_ENV_VAR`` set),
where the submitted job's runtime env rules.

The console is quiet unless ``$REIDLOOP_VERBOSE`` is set (``--verbose`` of the entry points, see
``trainers/cli.py``): ``ray.init(log_to_driver=False, logging_level=WARNING)``, so the workers' and actors'
output (Ray Train's controller, its placement-group cleaner, Serve's replicas, our own actors) stays in
Ray's log files (``/tmp/ray/session_latest/logs/``) instead of the driver's console, and the driver's
``ray`` logger shows warnings and errors only. Errors raised in workers still reach the driver (as the
exceptions ``ray.get`` raises). :func:`verbose` is what Ray Train's and Tune's run configs read. What our
own code logs inside workers and actors reaches the driver through :mod:`services.progress` instead.

A cluster that does not answer ends the join in seconds, not after Ray's retries (20 attempts of about
40 s each for a GCS address, about 45 s for ``ray://``): :func:`check_reachable` tries the address's TCP
port first (refused, unresolvable or silent for ``PROBE_TIMEOUT_S``: ``ConnectionError``), and
:func:`bound_join_waits` (called by the entry points before Ray is imported) bounds Ray's own retries with
its settings (``JOIN_WAITS``) for a port that accepts but is no Ray (one GCS attempt of about 20 s, three
Ray Client attempts of 5 s).
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Optional

from reidloop import crashpoints

log = logging.getLogger(__name__)

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by `ray job submit` for the entrypoint
VERBOSE_ENV = "REIDLOOP_VERBOSE"  # set (non-empty, not "0") by --verbose: Ray's own console output too


PROBE_TIMEOUT_S = 5.0  # how long a cluster's port may stay silent before the join is given up
# Ray's bounds on joining a cluster, as environment settings (a value already set wins). Read when Ray is
# imported (RayConfig) or when it connects, so set before: see bound_join_waits.
JOIN_WAITS = {
    # GCS address: connection attempts, about 1 s apart (ray/_private/node.py `_init_gcs_client`; default
    # RAY_NUM_REDIS_GET_RETRIES=20), each waiting up to RAY_py_gcs_connect_timeout_s (RayConfig; default 30)
    "RAY_gcs_server_port_wait_time_s": "1",
    "RAY_py_gcs_connect_timeout_s": "10",
    # ray:// (Ray Client, ray/util/client/worker.py): 3 attempts of 5, 10, 15 s by default; 5 s each
    "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "5",
    "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "5",
}


def bound_join_waits(address: Optional[str] = None) -> dict[str, str]:
    """When a cluster is to be joined (``address``, else ``$RAY_ADDRESS``), set Ray's connection bounds
    (``JOIN_WAITS``, unless already set) in this process's environment; returns what it set. A no-op for a
    local Ray (``RAY_gcs_server_port_wait_time_s`` also times a local GCS's start)."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        return {}
    added = {k: v for k, v in JOIN_WAITS.items() if k not in os.environ}
    os.environ.update(added)
    return added


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` unless the TCP port of ``address`` (``host:port`` or ``ray://host:port``)
    accepts a connection within ``timeout_s``; addresses without a port (``auto``) are left to Ray."""
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    if "://" not in address:
        host, _, port = _as_ray_connects(address).rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectionError(f"nothing answers at {address}: {why}") from None


def _as_ray_connects(address: str) -> str:
    """The host:port ``ray.init`` connects to for a GCS address (Ray puts the node's IP for localhost)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) or address
    except Exception:  # (a private helper: if it moves or fails, probe the address as given)
        return address


def verbose() -> bool:
    """Whether Ray, Ray Train, Tune and Serve may talk on the console (``$REIDLOOP_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def console_kwargs() -> dict:
    """``ray.init``'s console settings: none when verbose, else no worker output on the driver's console
    (``log_to_driver=False``; it is still in the session's log files) and the driver's ``ray`` logger at
    WARNING."""
    return {} if verbose() else {"log_to_driver": False, "logging_level": logging.WARNING}


def worker_env(env_vars: Optional[dict] = None) -> dict[str, str]:
    """What the workers get from this driver: its OMP_NUM_THREADS, the fault-injection variables, ``env_vars``."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return {**({"OMP_NUM_THREADS": threads} if threads else {}), **crashpoints.fault_env(),
            **{k: str(v) for k, v in (env_vars or {}).items()}}


def init_plan(address: Optional[str] = None, *, num_cpus: Optional[int] = None, env_vars: Optional[dict] = None,
              include_dashboard: Optional[bool] = False, **kwargs) -> tuple[str, dict]:
    """What :func:`start_or_join` calls: ``("join", ray.init's kwargs)`` for a cluster (the argument, else
    ``$RAY_ADDRESS``) or ``("local", init_local's kwargs)``; pure (reads the environment only)."""
    address = address or os.environ.get("RAY_ADDRESS")
    env = worker_env(env_vars)
    if env and JOB_CONFIG_ENV not in os.environ:  # inside a submitted job the job's runtime env rules
        runtime_env = dict(kwargs.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
        kwargs["runtime_env"] = runtime_env
    kwargs = {**console_kwargs(), **kwargs}
    if address:  # that cluster's token; its dashboard and CPUs are its own
        return "join", {"address": address, **kwargs}
    return "local", {"num_cpus": num_cpus, "include_dashboard": include_dashboard, **kwargs}


def start_or_join(address: Optional[str] = None, **kwargs) -> None:
    """Join the cluster at ``address`` (default ``$RAY_ADDRESS``), else start a new local Ray with token
    authentication; a no-op when Ray is already initialised. ``num_cpus`` sizes a local Ray only (a cluster
    has its own); ``include_dashboard=None`` leaves the dashboard to Ray's default; ``env_vars`` go to the
    workers. Other keyword arguments go to ``ray.init`` (see :func:`init_plan`)."""
    import ray

    if ray.is_initialized():
        return
    mode, init_kwargs = init_plan(address, **kwargs)
    if mode == "join":
        log.info("joining the Ray cluster at %s", init_kwargs["address"])
        check_reachable(init_kwargs["address"])
        bound_join_waits(init_kwargs["address"])  # (those read at connect time; the rest only if Ray came later)
        with warnings.catch_warnings():
            if not verbose():  # Ray Client's "connection timed out" warning: the ConnectionError's line says it
                warnings.filterwarnings("ignore", message="Ray Client connection timed out")
            ray.init(**init_kwargs)
    else:
        from .ray_auth import init_local  # a new local Ray with token authentication

        init_local(**init_kwargs)
