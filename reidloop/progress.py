"""Progress bars: one convention for every bar of the project.

A bar goes to stderr, only when stderr is a terminal (tqdm's ``disable=None``), so a log file or a
``ray job logs`` never fills with bar frames; ``$REIDLOOP_PROGRESS=1`` (``--progress`` of the entry
points) forces them on anyway, ``--quiet`` (``progress=False`` down the call chain) turns them off.
Bars are transient (``leave=False``): the lines that stay are the log's.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from tqdm.auto import tqdm

PROGRESS_ENV = "REIDLOOP_PROGRESS"  # "1": bars even when stderr is not a terminal


def forced() -> bool:
    """Whether bars are forced on (``$REIDLOOP_PROGRESS=1``)."""
    return os.environ.get(PROGRESS_ENV, "") == "1"


def shown() -> bool:
    """Whether a bar asked for would be drawn: forced, or stderr is a terminal."""
    if forced():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: Optional[int] = None, desc: str = "", enabled: bool = True, **kw) -> Optional[tqdm]:
    """A transient stderr bar (None when ``enabled`` is false); drawn on a terminal, or when forced."""
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=False if forced() else None, **kw)
