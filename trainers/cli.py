"""Shared command-line handling: ``--config FILE`` plus ``--set section.key=value`` overrides, ``--verbose``,
and the one-line exits of :func:`run_or_exit`."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import TypeVar

from reidloop.config import ConfigError, load_config
from reidloop.progress import PROGRESS_ENV
from services.ray_start import VERBOSE_ENV, bound_join_waits
from services.ray_start import verbose as ray_verbose

T = TypeVar("T")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file (see tune_configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal (they are drawn on a terminal only)")
    add_verbose(p)
    return p


# Our progress and warnings only, unless --verbose: Ray's, Ray Train's, Tune's and Serve's own console output
# is turned off where it is made (services/ray_start.py: ray.init(log_to_driver=False, logging_level=WARNING);
# Ray Train's RunConfig logging_config, Tune's verbose, Serve's logging_config); Ray's log files are written
# as always (/tmp/ray/session_latest/logs/).
RAY_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.serve", "ray.data")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's, Ray Train's, Tune's and Serve's own console output")


def console(verbose: bool) -> None:
    """Our log lines at INFO; Ray's loggers at WARNING (Ray's default, INFO, with ``verbose``); the choice is
    passed on to Ray through ``$REIDLOOP_VERBOSE``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    elif not ray_verbose():
        os.environ[VERBOSE_ENV] = "0"
        # Tune's new output engine prints its experiment header even at verbose=0; the legacy one is silent there
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for name in RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def progress(args: argparse.Namespace) -> None:
    """``--progress`` (and not ``--quiet``): bars even when stderr is not a terminal (``reidloop.progress``)."""
    if getattr(args, "progress", False) and not getattr(args, "quiet", False):
        os.environ[PROGRESS_ENV] = "1"


def load(cls: type[T], args: argparse.Namespace) -> T:
    """Load the typed config or exit with the loader's message (file and field named)."""
    console(getattr(args, "verbose", False))
    progress(args)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    # before Ray is imported (it reads its settings then): a cluster that does not answer fails in seconds
    bound_join_waits(getattr(getattr(cfg, "ray", None), "address", None))
    return cfg


def _cause(exc: BaseException) -> BaseException:
    """The error itself, not Ray's wrapper (a task's error carries the remote traceback in its text)."""
    if "ray" in sys.modules:
        from ray.exceptions import RayTaskError

        if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
            return exc.cause
    return exc


def exit_message(exc: BaseException) -> str | None:
    """The one line an expected error ends the run with (None: not one of them, let it raise)."""
    from reidloop.data.records import DatasetError
    from reidloop.lease import LeaseHeld, LeaseLost

    try:
        from services.ray_calls import ActorFailed
    except ImportError:  # (an install without Ray)
        ActorFailed = LeaseLost
    inner = _cause(exc)
    if isinstance(inner, OSError) and inner.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {inner.filename}" if inner.filename else ""
        return f"error: out of disk space{where}: free some space (or point output_dir / ray.storage_path elsewhere)"
    if type(inner) is ConnectionError:  # ray.init's "could not find / connect to the cluster"
        address = os.environ.get("RAY_ADDRESS")
        hint = f"; RAY_ADDRESS={address}: unset it to start a local Ray" if address else \
            " (check ray.address in the config; without one a local Ray is started)"
        return f"error: cannot reach the Ray cluster ({inner}){hint}"
    if isinstance(inner, DatasetError):
        return f"error: {inner} (check data.dataset and data.root in the config, or pass --set data.root=PATH)"
    if isinstance(inner, (ConfigError, FileNotFoundError, ValueError, LeaseHeld, LeaseLost,
                          ActorFailed, PortTaken)):
        return f"error: {inner}"
    return None


class PortTaken(OSError):
    """The port a server is to listen on is in use (raised before anything starts)."""


def run_or_exit(fn, *a, **kw):
    """Run ``fn``; expected user errors (bad data/config/files, no disk space, no Ray cluster at the address
    given, a port taken) exit with one clear line, without a traceback."""
    try:
        return fn(*a, **kw)
    except Exception as exc:
        message = exit_message(exc)
        if message is None:
            raise
        sys.exit(message)
