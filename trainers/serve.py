"""Serve the current Re-ID model over HTTP (Ray Serve; OpenAPI docs at <url>/docs).

    python -m trainers.serve --config tune_configs/serve.yaml [--set checkpoint=runs/synthetic --set port=8001]

Starts a local Ray unless RAY_ADDRESS names a running cluster, deploys ``services.serve_app``, prints
the URL and blocks until Ctrl-C (then shuts Serve down). The model follows ``checkpoint``: a running
training job's output folder works, its ``model.pt`` is reloaded whenever the job rewrites it.
Once it serves, it prints a ``curl`` that embeds one image of the run's data (``make serve`` runs this).
"""
from __future__ import annotations

import errno
import os
import shlex
import socket
import threading
from pathlib import Path
from typing import Optional

from reidloop.config.serve import ServeConfig

from .cli import PortTaken, load, parser, run_or_exit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortTaken` (one line, before Ray starts) when ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closed one's TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortTaken(f"port {port} on {host} is taken (another server, or a `make serve` "
                            f"still running?): stop it, or serve on another port with --set port={port + 1}") from None


def example_image(checkpoint: Optional[str]) -> Optional[str]:
    """One query image of the data the checkpoint's run used (from the run folder's config.yaml), or None."""
    from reidloop.config import LoopJob, load_config

    if not checkpoint:
        return None
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        data = load_config(LoopJob, str(folder / "config.yaml")).data
    except Exception:  # not a run folder (a bare checkpoint file): no example image
        return None
    if data.dataset == "synthetic":
        from reidloop.data.synthetic import config_hash

        root = Path(data.root or ".cache") / f"synthetic-{config_hash(data.synthetic)}"
    else:
        root = Path(data.root or "")
    for sub in ("query", "bounding_box_test", ""):
        if (root / sub).is_dir():
            found = sorted(p for p in (root / sub).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if found:
                return str(found[0])
    return None


def curl_command(cfg: ServeConfig, image: Optional[str], token: bool = False) -> str:
    """A ``curl`` that posts ``image`` (multipart field ``image``) to ``/embed`` on this machine; with
    ``token``, the bearer header reads the admin token from where the config says (never printed itself)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/embed"
    auth = ""
    if token:
        source = f"$(cat {shlex.quote(cfg.token_file)})" if cfg.token_file else "$REIDLOOP_TOKEN"
        auth = f'-H "Authorization: Bearer {source}" '
    return f"curl -s {auth}-F image=@{shlex.quote(image or 'PERSON.png')} {url}"


def serve_forever(cfg: ServeConfig) -> None:
    from reidloop.serving import Access, gallery_folder

    access = Access.from_config(cfg)  # before Ray starts: exposed without a token is refused in one line
    cluster = os.environ.get("RAY_ADDRESS")
    if not cluster:  # a cluster's Serve may hold the port already: that is its own
        check_port_free(cfg.host, cfg.port)
        from services.serve_front import prepare_local_front

        prepare_local_front(cfg.front, cfg.port)  # Ray reads them when `ray.serve` is imported and its processes start

    from ray import serve

    from services.ray_start import start_or_join
    from services.serve_app import deploy
    from services.serve_front import check_cluster_front

    start_or_join(include_dashboard=None)  # $RAY_ADDRESS's cluster, else a new local Ray (with its dashboard)
    if cluster:
        check_cluster_front(cfg.front, f"the cluster at {cluster}")
    url = deploy(cfg)
    print(f"serving {cfg.checkpoint} at {url}  (front: {cfg.front}; docs: {url}/docs; Ctrl-C stops)", flush=True)
    image = example_image(cfg.checkpoint)
    folder = gallery_folder(cfg)
    print(f"gallery: {folder or 'in memory only (persist_gallery: false)'}"
          f"{' (uploaded images kept there)' if folder and cfg.keep_images else ''}; access: "
          f"{'open on loopback (no token configured)' if access.open else 'bearer token required'}", flush=True)
    print(f"try:  {curl_command(cfg, image, token=bool(access.admin))}"
          + ("" if image else "   (PERSON.png: any image of a person)"), flush=True)
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
