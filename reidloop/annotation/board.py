"""The annotation board: everything the annotator page shows and does in a human-mode run, in one object.

The loop fills it (:meth:`Board.set_round` with each round's queries and their ranked candidates,
:meth:`Board.set_phase`, :meth:`Board.add_round` with each round's metrics); the page (``services/annotator_app.py``)
reads it and acts through it: :meth:`next` hands an annotator their question with its context, :meth:`answer`
and :meth:`undo` go to the desk and the oracle, :meth:`image_path` is the only way to an image file (by pool
index: a request can never name a path). Thread-safe; no Ray, no web framework.
"""
from __future__ import annotations

import operator
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .desk import QuestionDesk
from .human_oracle import HumanOracle

PHASES = ("starting", "asking", "fine-tuning", "evaluating", "done", "failed")


class Board:
    """A human-mode run as the page sees it (``paths``: the pool's image files, by pool index)."""

    def __init__(self, desk: QuestionDesk, oracle: HumanOracle, paths: Sequence[str | Path], *,
                 budget: Optional[int] = None, queries_total: int = 0,
                 curve: Optional[Callable[[], Optional[Path]]] = None) -> None:
        if len(paths) != oracle.pool_size:
            raise ValueError(f"paths: {len(paths)} paths for a pool of {oracle.pool_size} images")
        self.desk, self.oracle = desk, oracle
        self.paths = [Path(p) for p in paths]
        self.budget = budget if budget is not None else oracle.budget
        self.queries_total = operator.index(queries_total)
        self.curve = curve
        self.run_id = uuid.uuid4().hex[:12]  # changes when the process holding the run restarts
        self.started = time.time()
        self._lock = threading.Lock()
        self._round = 0
        self._phase = "starting"
        self._queries_done = 0
        self._ranked: dict[int, np.ndarray] = {}
        self._rounds: list[dict] = []
        self._error: Optional[str] = None

    # ---------------------------------------------------------------- the loop's side
    def set_round(self, round_: int, queries: Sequence[int], candidates: Sequence[Sequence[int]]) -> None:
        """Round ``round_`` asks about ``queries``, each with its ranked candidates (nearest first)."""
        with self._lock:
            self._round = operator.index(round_)
            self._ranked = {int(q): np.asarray(c, dtype=np.int64) for q, c in zip(queries, candidates)}
            self._phase = "asking"

    def set_phase(self, phase: str, error: Optional[str] = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase: {phase!r} is not one of {PHASES}")
        with self._lock:
            self._phase, self._error = phase, error

    def set_queries_done(self, n: int) -> None:
        with self._lock:
            self._queries_done = operator.index(n)

    def add_round(self, row: dict) -> None:
        """A finished round's row (``round``, ``answers``, ``mAP``, ``rank1`` ...: the loop's ``rounds`` row)."""
        keep = ("round", "answers", "mAP", "rank1", "rank5", "elapsed_seconds")
        with self._lock:
            self._rounds = [r for r in self._rounds if r["round"] != row["round"]]
            self._rounds.append({k: _plain(row[k]) for k in keep if k in row})

    # ---------------------------------------------------------------- the page's side
    def status(self) -> dict:
        """Progress for the page: answers, budget, queries, round, phase, the desk's queue, metrics so far."""
        desk = self.desk.status()
        with self._lock:
            return {"run_id": self.run_id, "round": self._round, "phase": self._phase, "error": self._error,
                    "answers": self.oracle.used, "budget": self.budget,
                    "remaining": self.oracle.remaining,
                    "queries_done": self._queries_done, "queries_total": self.queries_total,
                    "desk": desk, "rounds": list(self._rounds),
                    "curve": self.curve is not None and self.curve() is not None}

    def next(self, annotator: str) -> Optional[dict]:
        """The annotator's question (``QuestionDesk.take``) with the query's ranked list for context, or None."""
        ticket = self.desk.take(annotator)
        if ticket is None:
            return None
        with self._lock:
            ranked = self._ranked.get(ticket.query)
        context = []
        if ranked is not None:
            known = self.oracle.known_batch([(ticket.query, ranked.tolist())])[0]
            given = self.desk.answers_for([(ticket.query, int(c)) for c in ranked.tolist()])  # not logged yet
            known = [k if k is not None else g for k, g in zip(known, given)]
            context = [{"index": int(c), "rank": i + 1, "answer": y, "asking": int(c) == ticket.candidate}
                       for i, (c, y) in enumerate(zip(ranked.tolist(), known))]
        return {"id": ticket.id, "query": ticket.query, "candidate": ticket.candidate, "round": ticket.round,
                "step": ticket.step, "lease_left_s": max(0.0, ticket.leased_until - self.desk.clock()),
                "ranked": context}

    def answer(self, annotator: str, question_id: int, answer: Optional[int]) -> bool:
        """+1 / −1 / None (skip) for desk question ``question_id``; whether it counted (first answer wins).

        An answer that counted is in the desk's journal (fsynced) before this returns, so a page told "counted"
        never loses it to a crash of this process (``reidloop/annotation/journal.py``).
        """
        counted = self.desk.answer(question_id, annotator, answer)
        if counted and answer is not None:
            self.oracle.record(question_id)
        return counted

    def undo(self, annotator: str) -> Optional[dict]:
        """The annotator's latest answer taken back while its round is open; what was undone, or None."""
        undone = self.oracle.undo(annotator)
        if undone is None:
            return None
        return {"id": undone.id, "query": undone.query, "candidate": undone.candidate, "answer": undone.answer}

    def image_path(self, index: int) -> Path:
        """The image file of pool index ``index``; IndexError outside the pool."""
        i = operator.index(index)
        if not 0 <= i < len(self.paths):
            raise IndexError(f"image index {i} is out of range for a pool of {len(self.paths)} images")
        return self.paths[i]


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
