"""The RayService's ``serveConfigV2``, derived from the Serve app's own ``serve deploy`` config.

    python -m trainers.k8s_serve_config            # rewrite spec.serveConfigV2 of k8s/rayservice.yaml
    python -m trainers.k8s_serve_config --check    # exit 1 if the committed manifest differs
    python -m trainers.k8s_serve_config --stdout   # print the generated config

``tune_configs/serve_deploy.yaml`` stays the one source of the application (import path, ServeConfig
file, deployments); on Kubernetes only these change:

* files of this repository (``args.config``) are read from the image, where the project lives in
  ``APP_ROOT`` (k8s/Dockerfile's WORKDIR);
* the followed checkpoint (``args.checkpoint``, ``user_config.checkpoint``) is read from the shared
  volume mounted at ``DATA_ROOT``, where the active-learning RayJob writes it (``runs/x`` -> ``/data/runs/x``);
* ``RAY_AUTH_MODE`` is dropped from the runtime env: KubeRay sets token authentication on every pod;
* the HTTP proxy binds the pod's address (0.0.0.0), reachable only through the ClusterIP serve service,
  and the app is told so (``args.host``), so it requires its bearer token: the admin token is read from
  the Secret ``reidloop-serve-token`` mounted at ``SERVE_TOKEN_FILE`` in every Ray pod (k8s/README.md).
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tune_configs" / "serve_deploy.yaml"
MANIFEST = REPO / "k8s" / "rayservice.yaml"
APP_ROOT = "/home/ray/reidloop"  # the project inside the image (k8s/Dockerfile: WORKDIR)
DATA_ROOT = "/data"  # the shared PersistentVolumeClaim (k8s/pvc.yaml) in every Ray pod
POD_HOST = "0.0.0.0"  # the pod's own address; the Service in front of it is ClusterIP
SERVE_TOKEN_FILE = "/etc/reidloop/serve-token/token"  # Secret reidloop-serve-token, key "token" (rayservice.yaml)


def _in_image(path: str) -> str:
    return path if path.startswith("/") else f"{APP_ROOT}/{path}"


def _on_volume(path: str) -> str:
    return path if path.startswith("/") else f"{DATA_ROOT}/{path}"


def serve_config(source: Path = SOURCE) -> dict:
    """``source`` (a ``serve deploy`` config) with the cluster's paths, auth and bind address."""
    cfg = copy.deepcopy(yaml.safe_load(Path(source).read_text()))
    cfg.setdefault("http_options", {})["host"] = POD_HOST
    for app in cfg.get("applications", []):
        args = app.get("args") or {}
        if "config" in args:
            args["config"] = _in_image(str(args["config"]))
        if "checkpoint" in args:
            args["checkpoint"] = _on_volume(str(args["checkpoint"]))
        args["host"] = POD_HOST  # what the proxy binds: the app then refuses to start without a token
        args.setdefault("token_file", SERVE_TOKEN_FILE)
        app["args"] = args
        for dep in app.get("deployments", []):
            user = dep.get("user_config") or {}
            if "checkpoint" in user:
                user["checkpoint"] = _on_volume(str(user["checkpoint"]))
        env = app.get("runtime_env") or {}
        (env.get("env_vars") or {}).pop("RAY_AUTH_MODE", None)
        if "env_vars" in env and not env["env_vars"]:
            del env["env_vars"]
        if "runtime_env" in app and not env:
            del app["runtime_env"]
    return cfg


def render(cfg: dict) -> str:
    """The text that goes into the manifest's ``serveConfigV2: |`` block."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=100)


BLOCK = re.compile(r"^(?P<indent>[ \t]*)serveConfigV2:[ \t]*\|[-+]?[ \t]*$", re.M)


def replace_block(manifest_text: str, body: str) -> str:
    """``manifest_text`` with the ``serveConfigV2: |`` block scalar replaced by ``body`` (rest untouched)."""
    m = BLOCK.search(manifest_text)
    if m is None:
        raise ValueError("no `serveConfigV2: |` block in the manifest")
    indent = m.group("indent") + "  "
    lines = manifest_text[m.end() + 1:].split("\n")
    end = 0  # the block runs while lines are blank or indented deeper than the key
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith(indent):
            break
        end = i + 1
    while end and not lines[end - 1].strip():  # trailing blank lines stay outside the block
        end -= 1
    new = [indent + line if line else "" for line in body.rstrip("\n").split("\n")]
    return manifest_text[:m.end() + 1] + "\n".join(new + lines[end:])


def committed(manifest: Path = MANIFEST) -> str:
    """The serveConfigV2 text of the committed RayService manifest."""
    return yaml.safe_load(Path(manifest).read_text())["spec"]["serveConfigV2"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=SOURCE, help="the `serve deploy` config (default: %(default)s)")
    p.add_argument("--manifest", type=Path, default=MANIFEST, help="the RayService manifest (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare; exit 1 if the manifest differs")
    mode.add_argument("--stdout", action="store_true", help="print the generated serveConfigV2")
    args = p.parse_args(argv)
    body = render(serve_config(args.source))
    if args.stdout:
        print(body, end="")
        return
    if args.check:
        if committed(args.manifest) != body:
            sys.exit(f"{args.manifest}: serveConfigV2 differs from {args.source}; "
                     f"run `python -m trainers.k8s_serve_config` to regenerate it")
        print(f"{args.manifest}: serveConfigV2 is up to date")
        return
    text = args.manifest.read_text()
    new = replace_block(text, body)
    if new != text:
        args.manifest.write_text(new)
        print(f"{args.manifest}: serveConfigV2 regenerated from {args.source}")
    else:
        print(f"{args.manifest}: serveConfigV2 already up to date")


if __name__ == "__main__":
    main()
