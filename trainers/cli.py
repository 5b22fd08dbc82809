"""Shared command-line handling: ``--config FILE`` plus ``--set section.key=value`` overrides."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TypeVar

from reidloop.config import ConfigError, load_config

T = TypeVar("T")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML file (see tune_configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def load(cls: type[T], args: argparse.Namespace) -> T:
    """Load the typed config or exit with the loader's message (file and field named)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")


def run_or_exit(fn, *a, **kw):
    """Run ``fn``; expected user errors (bad data/config/files) exit with one clear line."""
    from reidloop.data.records import DatasetError
    from reidloop.lease import LeaseHeld, LeaseLost

    try:
        from services.ray_calls import ActorFailed
    except ImportError:  # (an install without Ray)
        ActorFailed = LeaseLost

    try:
        return fn(*a, **kw)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError, LeaseHeld, LeaseLost, ActorFailed) as exc:
        sys.exit(f"error: {exc}")
