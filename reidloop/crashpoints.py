"""The run's durable writes, named, so that a fault-injection test can end the process at each of them.

Every write of the run's truth goes through :mod:`reidloop.atomic`, which calls :func:`reach` with the
write's point just before the rename that publishes it; the round checkpoint also reaches ``prune`` and
the answer log ``answers/compact``. A point is the end of the written path with its digits replaced by
``N`` (``checkpoints/round-N/model.pt``, ``answers/part-N.parquet``, ``state.json``).

``REIDLOOP_CRASH_AT=<point>@<n>`` ends the process with ``os._exit(CRASH_EXIT)`` — like a SIGKILL: no
cleanup, no buffered write flushed — the n-th time (from 1) it reaches ``<point>``.
``REIDLOOP_STOP_AT=<point>@<n>`` stops the process there with SIGSTOP instead (a test holds a live writer
at a known point, then sends SIGCONT). ``REIDLOOP_CRASH_TRACE=<file>`` appends every point reached to ``<file>``, one per line.
Unset (always, outside tests), :func:`reach` costs two dictionary lookups.

``POINTS`` lists every point an active-learning run reaches; ``tests/test_crash_points.py`` kills a run
at each of them and checks that it resumes to the uninterrupted run's answers and metrics, and fails
when a run reaches a point missing here — a new write comes with its crash case.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

CRASH_EXIT = 86

POINTS = (
    "config.yaml",  # the run's config, on every start
    "answers/part-N.parquet",  # each flushed batch of answers
    "answers/compact",  # after a round: the merged part written, the old parts about to be deleted
    "checkpoints/round-N/model.pt",  # round r's checkpoint, written whole ...
    "checkpoints/round-N/strategy.pt",
    "checkpoints/round-N/rounds.parquet",
    "checkpoints/round-N/round.json",
    "state.json",  # ... then made current: the commit point
    "model.pt",  # published for readers (Serve follows it); never read back on resume
    "strategy.pt",
    "rounds.parquet",
    "prune",  # the previous round's folder about to be deleted
    "summary.json",  # the end of the run
    "curve.png",  # the run's curve, drawn after the summary (and after each round for the annotator page)
)

ENV_VARS = ("REIDLOOP_CRASH_AT", "REIDLOOP_CRASH_TRACE", "REIDLOOP_STOP_AT")

_counts: dict[str, int] = {}


def fault_env() -> dict[str, str]:
    """The fault-injection variables set in this process, for the runtime env of the Ray workers it starts
    (empty outside tests)."""
    return {k: os.environ[k] for k in ENV_VARS if os.environ.get(k)}


def point_of(path: str | os.PathLike) -> str:
    """The crash point of a write to ``path``: the longest entry of POINTS that ends the path (digits read
    as N), else the file name with digits as N — a write not listed, which the crash test reports."""
    parts = re.sub(r"\d+", "N", Path(path).as_posix()).split("/")
    for point in sorted(POINTS, key=lambda p: -p.count("/")):
        n = point.count("/") + 1
        if "/".join(parts[-n:]) == point:
            return point
    return parts[-1]


def reach(point: str) -> None:
    """A durable write is about to be published (see the module doc)."""
    trace, at, stop = (os.environ.get(k) for k in ("REIDLOOP_CRASH_TRACE", "REIDLOOP_CRASH_AT", "REIDLOOP_STOP_AT"))
    if trace is None and at is None and stop is None:
        return
    if trace:
        with open(trace, "a") as f:
            f.write(point + "\n")
    if at and _nth_time(at, point):
        os._exit(CRASH_EXIT)
    if stop and _nth_time(stop, point):
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen here until SIGCONT (a test holds a writer at a known point)


def _nth_time(spec: str, point: str) -> bool:
    name, _, nth = spec.rpartition("@")
    if name != point:
        return False
    _counts[spec] = _counts.get(spec, 0) + 1
    return _counts[spec] == int(nth)
