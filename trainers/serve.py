"""Serve the current Re-ID model over HTTP (Ray Serve; OpenAPI docs at <url>/docs).

    python -m trainers.serve --config tune_configs/serve.yaml [--set checkpoint=runs/synthetic --set port=8001]

Starts a local Ray unless RAY_ADDRESS names a running cluster, deploys ``services.serve_app``, prints
the URL and blocks until Ctrl-C (then shuts Serve down). The model follows ``checkpoint``: a running
training job's output folder works, its ``model.pt`` is reloaded whenever the job rewrites it.
"""
from __future__ import annotations

import os
import threading

from reidloop.config.serve import ServeConfig

from .cli import load, parser, run_or_exit


def serve_forever(cfg: ServeConfig) -> None:
    import ray
    from ray import serve

    from services.ray_auth import init_local
    from services.serve_app import deploy

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # the running cluster, with its own token
        else:
            init_local()  # a new local Ray with token authentication (services/ray_auth.py)
    url = deploy(cfg)
    print(f"serving {cfg.checkpoint} at {url}  (docs: {url}/docs; Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    run_or_exit(serve_forever, load(ServeConfig, args))


if __name__ == "__main__":
    main()
