"""One writer per run folder: a lease file that names its holder and is kept alive by a heartbeat.

The run folder's truth (answer log, round checkpoints) must have one writer. ``flock`` cannot promise
that where the folder is a shared volume (NFS on Kubernetes), so the lease is a plain file,
``<run>/writer.lease``, created with no-overwrite semantics (a link to a name that must not exist, atomic
on local filesystems and NFS alike). It records the holder — a random id, pid, host, the process's start
time, since when — and its modification time is the heartbeat: a daemon thread touches it every
``heartbeat_s`` while the holder lives.

A second writer fails at once with :class:`LeaseHeld`, one line naming the holder. A lease is taken over
when its holder is dead: at once when the holder ran on this host and its process is gone (or its pid now
belongs to another process), otherwise once its heartbeat is older than ``stale_after_s``. The takeover
renames the stale file away (only one contender can) and checks it was still stale, so two processes
that find the same dead lease cannot both win. A holder whose lease was taken over while it was frozen
(a suspended process, a partitioned node) learns it at its next :meth:`Lease.verify` — the loop calls
it before each round's commit — and stops with :class:`LeaseLost`; its answer-log parts are created
exclusively, so even then no answer is overwritten.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .atomic import fsync_dir

log = logging.getLogger(__name__)

LEASE_FILE = "writer.lease"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0  # a holder silent this long is taken for dead (20 missed heartbeats' margin)


class LeaseHeld(RuntimeError):
    """Another live process holds the run folder's lease."""


class LeaseLost(RuntimeError):
    """This process's lease was taken over (it was silent past the stale limit) or removed."""


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass(frozen=True)
class Holder:
    id: str
    pid: int
    host: str
    since: float
    pid_start: Optional[str] = None

    def describe(self, heartbeat: Optional[float] = None) -> str:
        text = f"pid {self.pid} on {self.host} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"
        if heartbeat is not None:
            text += f", last heartbeat {max(0.0, time.time() - heartbeat):.0f} s ago"
        return text


class Lease:
    """The writer lease of ``folder``; use as a context manager or :meth:`acquire` / :meth:`release`."""

    def __init__(self, folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(f"lease: heartbeat_s={heartbeat_s} must be positive and below stale_after_s={stale_after_s}")
        self.folder = Path(folder)
        self.path = self.folder / LEASE_FILE
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.me = Holder(uuid.uuid4().hex, os.getpid(), socket.gethostname(), time.time(), _proc_start(os.getpid()))
        self.took_over: Optional[Holder] = None  # the dead holder this lease replaced, if any
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- reading
    def read(self) -> tuple[Optional[Holder], Optional[float]]:
        """(holder, heartbeat time) of the lease file; (None, None) when there is none."""
        try:
            with self.path.open() as f:
                heartbeat = os.fstat(f.fileno()).st_mtime
                raw = f.read()
        except FileNotFoundError:
            return None, None
        try:
            return Holder(**json.loads(raw)), heartbeat
        except (ValueError, TypeError) as exc:
            raise LeaseHeld(f"{self.path}: unreadable writer lease ({exc}); if no process writes to "
                            f"{self.folder}, delete the file") from None

    def dead_because(self, holder: Holder, heartbeat: float) -> Optional[str]:
        """Why ``holder`` may be taken over (None: it may be alive)."""
        if holder.host == self.me.host:
            if not _pid_alive(holder.pid):
                return "its process is gone"
            start = _proc_start(holder.pid)
            if holder.pid_start is not None and start is not None and start != holder.pid_start:
                return "its pid now belongs to another process"
        age = time.time() - heartbeat
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_after_s:.0f} s)"
        return None

    # ---- taking and giving back
    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2) -> "Lease":
        """Take the lease, over a dead holder's if need be; LeaseHeld naming the holder if it is alive
        (after waiting up to ``wait_s`` for it to die: a killed driver's actors go within seconds)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            if self._create():
                break
            holder, heartbeat = self.read()
            if holder is None:
                continue  # released or broken meanwhile: try again
            why = self.dead_because(holder, heartbeat)
            if why is not None:
                if self._break(holder):
                    log.warning("%s: took over the writer lease of %s: %s", self.folder, holder.describe(heartbeat), why)
                    self.took_over = holder
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"{self.folder} is being written by {holder.describe(heartbeat)} "
                                f"(lease {self.path}); stop that run first — a dead holder's lease is taken over "
                                f"after {self.stale_after_s:.0f} s without a heartbeat")
            time.sleep(poll_s)  # waiting for another process to end, not synchronising a test
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.folder.name}", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        tmp = self.folder / f".{LEASE_FILE}.{self.me.id}.new"
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(self.me)))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)  # fails if the lease exists: never overwrites
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
            _fsync_dir(self.folder)

    def _break(self, holder: Holder) -> bool:
        """Move a dead holder's lease away; False if another contender (or the holder) got there first."""
        aside = self.folder / f".{LEASE_FILE}.{self.me.id}.broken"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = Holder(**json.loads(aside.read_text()))
            beat = aside.stat().st_mtime
            if moved != holder or self.dead_because(moved, beat) is None:
                # a new lease was created, or the holder came back, between our read and the rename: put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                return False
            return True
        finally:
            aside.unlink(missing_ok=True)
            _fsync_dir(self.folder)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder, _ = self.read()
                if holder is None or holder.id != self.me.id:
                    return  # lost: verify() reports it
                os.utime(self.path)  # (touching a lease taken over meanwhile only keeps the new holder's alive)
            except (OSError, LeaseHeld) as exc:  # a transient error on a network volume: try at the next beat
                log.debug("lease heartbeat of %s failed: %s", self.path, exc)

    def verify(self) -> None:
        """LeaseLost unless this process still holds the lease (called before each durable commit)."""
        try:
            holder, heartbeat = self.read()
        except LeaseHeld as exc:
            raise LeaseLost(str(exc)) from None
        if holder is None or holder.id != self.me.id:
            who = "nobody" if holder is None else holder.describe(heartbeat)
            raise LeaseLost(f"{self.folder}: this process ({self.me.describe()}) no longer holds the writer lease, "
                            f"{who} does; stopping before writing anything more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder, _ = self.read()
        except LeaseHeld:
            return
        if holder is not None and holder.id == self.me.id:
            self.path.unlink(missing_ok=True)
            _fsync_dir(self.folder)

    def __enter__(self) -> "Lease":
        return self.acquire() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _fsync_dir(folder: Path) -> None:
    try:
        fsync_dir(folder)
    except OSError:  # some network filesystems refuse fsync on a directory
        pass


def clear_for_copy(folder: str | os.PathLike) -> None:
    """Remove a lease copied along with a run folder (a restored checkpoint): it names the copy's source."""
    (Path(folder) / LEASE_FILE).unlink(missing_ok=True)
