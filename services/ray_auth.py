"""Ray token authentication for the Ray this project starts on this machine.

Every entry point that starts a local Ray (``make run`` / ``trainers.run_job``, ``trainers.serve``,
``trainers.l2r_experiment``, ``trainers.sweep``: all through :func:`services.ray_start.start_or_join`;
``cluster/start_head.sh``) goes through here, so that Ray always starts with ``RAY_AUTH_MODE=token``:

* :func:`ensure_token` creates the token file on first use (``secrets.token_hex(32)``, mode 0600, in a
  0700 directory) and reuses it afterwards; the token itself is never printed or logged;
* :func:`use_token_auth` sets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` in this process's
  environment (inherited by every Ray process started from it) and refreshes Ray's cached config;
* :func:`init_local` does that and starts a new local Ray (``ray.init(address="local", ...)``).

The token file is Ray's default, ``~/.ray/auth_token``, unless ``RAY_AUTH_TOKEN_PATH`` names another;
it must lie outside the repository (a ``RAY_AUTH_TOKEN`` variable, if set, wins over the file in Ray,
for the local Ray and its clients alike). ``ray job submit`` / ``ray status`` against such a head need only
``RAY_AUTH_MODE=token`` (plus ``RAY_AUTH_TOKEN_PATH`` when it is not the default file):

    python -m services.ray_auth     # creates the token if needed, prints its path (never the token)

Joining an existing cluster (``RAY_ADDRESS`` / ``ray.address``) does not come here: that cluster's
token is the one to use (under ``ray job submit`` the driver inherits it from the cluster).
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Optional

from reidloop import atomic

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")  # Ray's own default token file
REPO = Path(__file__).resolve().parents[1]


def token_path() -> Path:
    """``$RAY_AUTH_TOKEN_PATH`` if set, else Ray's default ``~/.ray/auth_token`` (absolute)."""
    return Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH).expanduser().absolute()


def _has_token(path: Path) -> bool:
    try:
        return path.read_text().strip() != ""  # Ray treats an empty file as no token
    except FileNotFoundError:
        return False


def ensure_token(path: Optional[Path] = None) -> Path:
    """The token file (default :func:`token_path`), created with mode 0600 when missing or empty.

    An existing token is reused as it is; if group or others may read it, it is made 0600. The file is
    written whole under a temporary name and linked into place, so a concurrent first use never reads
    a half-written token and never replaces the other's."""
    path = Path(path).expanduser().absolute() if path is not None else token_path()
    if path.resolve().is_relative_to(REPO):
        raise ValueError(f"{path}: the Ray token must not live inside the repository ({REPO})")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _has_token(path):
        # written whole (a 0600 temporary file, fsynced) and linked into place, or over an empty file
        empty = path.exists()
        try:
            with atomic.atomic_open(path, "w", exclusive=not empty) as f:
                f.write(secrets.token_hex(32))
            log.info("%s a new Ray token in %s (mode 0600)", "wrote" if empty else "created", path)
        except FileExistsError:
            pass  # another process created it first: its token is the one to use
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
    return path


def use_token_auth(path: Optional[Path] = None) -> Path:
    """Token authentication for a Ray started by this process: the token (see :func:`ensure_token`),
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` in ``os.environ``. Returns the token's path.

    Any other ``RAY_AUTH_MODE`` in the environment (an old ``disabled``) is overridden, with a warning.
    Ray reads its config when imported, so the cached config is refreshed here, as Ray's own
    ``ray.init`` does when it turns token authentication on."""
    path = ensure_token(path)
    previous = os.environ.get(AUTH_MODE_ENV)
    if previous is not None and previous.lower() != "token":
        log.warning("%s=%s ignored: the local Ray starts with token authentication", AUTH_MODE_ENV, previous)
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[TOKEN_PATH_ENV] = str(path)
    if "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    return path


def init_local(**kwargs):
    """Start a new local Ray with token authentication (never attaches to another Ray on this machine)."""
    use_token_auth()
    import ray

    return ray.init(address="local", **kwargs)


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(ensure_token())


if __name__ == "__main__":
    main()
