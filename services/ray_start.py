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
exceptions ``ray.get`` raises). :func:`verbose` is what Ray Train's and Tune's run configs read.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from reidloop import crashpoints

log = logging.getLogger(__name__)

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by `ray job submit` for the entrypoint
VERBOSE_ENV = "REIDLOOP_VERBOSE"  # set (non-empty, not "0") by --verbose: Ray's own console output too


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
        ray.init(**init_kwargs)
    else:
        from .ray_auth import init_local  # a new local Ray with token authentication

        init_local(**init_kwargs)
