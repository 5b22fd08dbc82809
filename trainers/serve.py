"""Serve the current Re-ID model over HTTP (Ray Serve; OpenAPI docs at <url>/docs).

    python -m trainers.serve --config tune_configs/serve.yaml [--set checkpoint=runs/synthetic --set port=8001]

Starts a local Ray unless RAY_ADDRESS names a running cluster, deploys ``services.serve_app``, prints
the URL and blocks until Ctrl-C (then shuts Serve down). The model follows ``checkpoint``: a running
training job's output folder works, its ``model.pt`` is reloaded whenever the job rewrites it.
"""
from __future__ import annotations

import threading

from reidloop.config.serve import ServeConfig

from .cli import load, parser, run_or_exit


def serve_forever(cfg: ServeConfig) -> None:
    from ray import serve

    from services.ray_start import start_or_join
    from services.serve_app import deploy

    start_or_join(include_dashboard=None)  # $RAY_ADDRESS's cluster, else a new local Ray (with its dashboard)
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
