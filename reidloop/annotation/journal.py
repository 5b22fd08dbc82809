"""The desk's journal: every answer a person gives, durable the moment it is given.

The answer log (Parquet) receives answers in the order the loop *asked* them, once a whole lock-step batch is
answered, so that a resumed round replays the same questions in the same order. People answer in their own
order, so an answer can wait on the desk for the rest of its batch; a crash in that wait would lose it. The
journal closes that window: :meth:`DeskJournal.answer` appends one JSON line and fsyncs it before the page is
told the answer counted, :meth:`DeskJournal.undo` records an undo the same way, and :meth:`DeskJournal.pending`
gives back, after a restart, the answers in force that the log does not hold yet, which the
:class:`~reidloop.annotation.HumanOracle` then serves without asking anyone again.

One line per event: ``{"pair": [a, b], "answer": 1 | -1, "annotator": "...", "time": "ISO 8601"}`` or
``{"pair": [a, b], "undo": true}`` (pairs as sorted pool indices). A torn last line (a crash mid-write) is
ignored; any other unreadable line is an error naming the file and line.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Iterable

from .. import atomic

Pair = tuple[int, int]


class DeskJournal:
    """An append-only, fsynced JSON-lines file of the answers people gave and the undos they made."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def answer(self, pair: Pair, answer: int, annotator: str, time: datetime) -> None:
        self._append({"pair": list(pair), "answer": int(answer), "annotator": annotator, "time": time.isoformat()})

    def undo(self, pair: Pair) -> None:
        self._append({"pair": list(pair), "undo": True})

    def pending(self, logged: Iterable[Pair] = ()) -> dict[Pair, tuple[int, str, datetime]]:
        """pair -> (answer, annotator, time) of the answers in force, without the pairs in ``logged``."""
        out: dict[Pair, tuple[int, str, datetime]] = {}
        if not self.path.exists():
            return out
        lines = self.path.read_text().split("\n")
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                pair = (int(e["pair"][0]), int(e["pair"][1]))
                if e.get("undo"):
                    out.pop(pair, None)
                else:
                    out[pair] = (int(e["answer"]), str(e["annotator"]), datetime.fromisoformat(e["time"]))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                if n == len(lines):  # no newline after it: torn by a crash mid-write, never acknowledged
                    break
                raise ValueError(f"{self.path}: line {n} is not a journal entry ({exc}): {line[:200]!r}") from None
        for pair in logged:
            out.pop(pair, None)
        return out

    def rewrite(self, keep: dict[Pair, tuple[int, str, datetime]]) -> None:
        """Replace the file by the entries of ``keep`` only (atomically): what the log holds is dropped."""
        with self._lock:
            text = "".join(json.dumps({"pair": list(p), "answer": a, "annotator": who, "time": t.isoformat()}) + "\n"
                           for p, (a, who, t) in sorted(keep.items()))
            atomic.write_text(self.path, text)

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry) + "\n"
        with self._lock:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
