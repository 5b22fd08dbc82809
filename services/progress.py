"""Our progress and log lines from Ray workers and actors, shown by the driver.

The driver starts Ray with ``log_to_driver=False`` (``services/ray_start.py``): nothing a worker or actor
prints reaches the driver's console, nor ``ray job logs`` under ``ray job submit``. What of it is ours
comes back through a :class:`ProgressRelay` actor instead:

* a Ray Train worker (fine-tuning steps) or an embedding task (batches of its shard) reports how far it is,
  ``update(topic, part, done, total)``; the driver draws one bar over all parts (``reidloop.progress.bar``:
  on a terminal, or forced);
* records of the ``reidloop`` and ``services`` loggers made in a worker inside :func:`forwarding` (INFO and
  up: e.g. the autocast fallback warning of ``checked_precision``, a skipped unreadable image) are sent to
  the relay and logged again by the driver, under their own logger's name, prefixed with where they came from,
  each message once per run (every new worker process would repeat e.g. the autocast warning).

The driver polls the relay while it waits (:meth:`Relay.watching`, a thread); a worker's last update and its
log records are sent with ``ray.get`` (delivered before the worker's result is), the updates in between are
fire-and-forget. A relay that is gone costs the bars and forwarded lines, never the run.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from typing import Optional

import ray

from reidloop.progress import bar

log = logging.getLogger(__name__)

FORWARDED = ("reidloop", "services")  # the loggers whose records in a worker reach the driver
POLL_S = 0.25  # how often the driver reads the relay while it waits


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressRelay:
    """Holds the latest (done, total) of each part of each topic, and log records not yet read."""

    def __init__(self) -> None:
        self.parts: dict[str, dict] = {}
        self.records: list[tuple] = []

    def update(self, topic: str, part, done: int, total: int) -> None:
        self.parts.setdefault(topic, {})[part] = (int(done), int(total))

    def log(self, records: list[tuple]) -> None:
        self.records.extend(records)

    def drain(self, topic: str) -> tuple[dict, list[tuple]]:
        records, self.records = self.records, []
        return dict(self.parts.get(topic, {})), records

    def forget(self, topic: str) -> tuple[dict, list[tuple]]:
        parts, records = self.drain(topic)
        self.parts.pop(topic, None)
        return parts, records


class Reporter:
    """A worker's side of one topic (picklable: travels in a task's arguments or a Train loop's config)."""

    def __init__(self, relay, topic: str, where: str) -> None:
        self.relay, self.topic, self.where = relay, topic, where

    def update(self, part, done: int, total: int, wait: bool = False) -> None:
        """Report ``done`` of ``total`` for ``part``; ``wait``: until the relay has it (a part's last report)."""
        try:
            ref = self.relay.update.remote(self.topic, part, done, total)
            if wait:
                ray.get(ref, timeout=30)
        except Exception:  # the relay gone: the bar stops, the work goes on
            pass

    @contextlib.contextmanager
    def forwarding(self, where: Optional[str] = None):
        """Send the records of our loggers (INFO and up) made inside the block to the driver, once it ends."""
        handler = _Collect()
        loggers = [logging.getLogger(name) for name in FORWARDED]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            if lg.getEffectiveLevel() > logging.INFO:
                lg.setLevel(logging.INFO)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.removeHandler(handler)
                lg.setLevel(level)
            if handler.records:
                records = [(name, level, where or self.where, message) for name, level, message in handler.records]
                try:
                    ray.get(self.relay.log.remote(records), timeout=30)
                except Exception:
                    pass


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.name, record.levelno, record.getMessage()))
        except Exception:
            self.handleError(record)


def emit(records: list[tuple], seen: Optional[set] = None) -> None:
    """Log forwarded records ``(logger, level, where, message)`` again in this (the driver's) process, under
    their own logger names, ``(where)`` first; a message already in ``seen`` (e.g. the same warning from each
    new worker process) is not logged again."""
    for name, level, where, message in records:
        if seen is not None:
            if (name, level, message) in seen:
                continue
            seen.add((name, level, message))
        logging.getLogger(name).log(level, "(%s) %s", where, message)


class Relay:
    """The driver's side: one :class:`ProgressRelay` actor (started on first use, :meth:`close` stops it)."""

    _topics = itertools.count()

    def __init__(self) -> None:
        self.handle = None
        self.seen: set = set()  # forwarded messages logged already: each once per run

    def _handle(self):
        if self.handle is None:
            self.handle = ProgressRelay.remote()
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            ray.kill(self.handle, no_restart=True)
            self.handle = None

    @contextlib.contextmanager
    def watching(self, desc: str, where: str, total: Optional[int] = None, progress: bool = True,
                 unit: str = "it"):
        """Yield a :class:`Reporter` for the work done inside the block; meanwhile draw its bar (``progress``
        and :func:`reidloop.progress.bar`'s rules) and log the records the workers forward."""
        handle = self._handle()
        topic = f"{desc}#{next(self._topics)}"
        shown = bar(total or 0, desc, enabled=progress, unit=unit)
        stop = threading.Event()

        def show(parts: dict, records: list) -> None:
            if records and shown is not None:
                shown.clear()  # the line on its own, not after the bar's frame
            emit(records, self.seen)
            if shown is not None and parts:
                done = sum(d for d, _ in parts.values())
                shown.total = max(total or 0, sum(t for _, t in parts.values()), done)
                shown.n = done
            if shown is not None and (parts or records):
                shown.refresh()

        def poll() -> None:
            while not stop.wait(POLL_S):
                try:
                    show(*ray.get(handle.drain.remote(topic), timeout=30))
                except Exception:  # the relay gone: no more bars, the run goes on
                    return

        watcher = threading.Thread(target=poll, name=f"progress {desc}", daemon=True)
        watcher.start()
        try:
            yield Reporter(handle, topic, where)
        finally:
            stop.set()
            watcher.join()
            try:
                show(*ray.get(handle.forget.remote(topic), timeout=30))
            except Exception:
                pass
            if shown is not None:
                shown.close()
