"""Round checkpoints that a crash at any instant leaves whole.

Round r's checkpoint is written into its own folder ``checkpoints/round-<r>/`` — ``model.pt``,
``strategy.pt``, ``rounds.parquet``, then ``round.json`` naming the round, its answers and where the
next round starts — each file fsynced, then made current by rewriting ``state.json`` (one atomic,
fsynced rename: the commit point). A crash before the commit leaves the previous round current and
the half-written folder is written again; a crash after it leaves round r current. On resume
:func:`load_round` checks that ``state.json``, ``round.json`` and the model's own round agree, so a
checkpoint is never mixed from two rounds.

``model.pt``, ``strategy.pt`` and ``rounds.parquet`` at the top of the run folder are published
after the commit (hard links, else copies) for readers — Serve follows ``model.pt`` — and are never
read back; the previous round's folder is deleted last (or on resume, after a crash).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .. import atomic, crashpoints

FOLDER = "checkpoints"
FILES = ("model.pt", "strategy.pt", "rounds.parquet")  # what each round folder holds (and is published)


def round_dir(out: Path, r: int) -> Path:
    return Path(out) / FOLDER / f"round-{r:04d}"


def commit_round(out: Path, r: int, state: dict, write: Callable[[Path], None]) -> None:
    """Write round ``r`` whole with ``write(folder)`` (which writes FILES there), then make it current."""
    out = Path(out)
    folder = round_dir(out, r)
    current = read_state(out)
    if current is not None and current.get("checkpoint") == folder.relative_to(out).as_posix():
        raise RuntimeError(f"{folder} is the current checkpoint; round {r} cannot be written again")
    if folder.exists():  # left by a crash before its commit: never current
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"round {r}'s checkpoint lacks {missing} in {folder}")
    state = {"completed_round": r, **state, "checkpoint": folder.relative_to(out).as_posix()}
    atomic.write_json(folder / "round.json", state)
    atomic.fsync_dir(folder.parent)
    atomic.write_json(out / "state.json", state)  # the commit
    publish(out, folder)
    prune(out, folder)


def prune(out: Path, current: Path) -> None:
    """Delete every round folder but the current one."""
    for old in sorted((Path(out) / FOLDER).glob("round-*")):
        if old != current:
            crashpoints.reach("prune")
            shutil.rmtree(old)


def publish(out: Path, folder: Path) -> None:
    """The current round's files at the top of the run folder, for readers."""
    for name in FILES:
        atomic.link_or_copy(folder / name, Path(out) / name)


def has_progress(out: Path) -> bool:
    """Whether the run folder holds anything a start would resume from (answers, a pre-trained model,
    a warmed-up agent, a round checkpoint)."""
    out = Path(out)
    return any((out / name).exists() for name in ("state.json", "pretrained.pt", "strategy_warm.pt")) or \
        any((out / "answers").glob("*.parquet"))


def read_state(out: Path) -> dict | None:
    """The run's ``state.json`` (None before its first round is committed)."""
    path = Path(out) / "state.json"
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def load_round(out: Path) -> tuple[dict, Path] | None:
    """(state, folder holding the current round's FILES); None when no round was completed.

    Raises ValueError naming the file when the pieces do not belong together. A run folder written
    before round folders existed (no ``checkpoint`` in ``state.json``) reads its files from the top.
    """
    out = Path(out)
    state = read_state(out)
    if state is None:
        return None
    if "completed_round" not in state:
        raise ValueError(f"{out / 'state.json'}: no completed_round")
    if "checkpoint" not in state:
        return state, out
    folder = out / state["checkpoint"]
    manifest = folder / "round.json"
    if not manifest.is_file():
        raise ValueError(f"{out / 'state.json'} names {folder}, which has no round.json")
    if _read_json(manifest) != state:
        raise ValueError(f"{manifest} does not match {out / 'state.json'}")
    return state, folder
