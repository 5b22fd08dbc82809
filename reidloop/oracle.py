"""The human oracle of DRAL Algorithm 1: binary feedback y ∈ {+1, −1} for a pair (q, g_k) (Eq. 6).

``SimulatedOracle`` answers from ground-truth person ids, optionally flipping each answer with a
fixed probability (a fallible annotator). The flip for a pair depends only on (seed, pair), never on
the asking order, so a resumed run gets the answers an uninterrupted run would have got. Every answer
goes into the :class:`~reidloop.answer_log.AnswerLog` before it is returned, and a new oracle over a
non-empty log resumes from it: the budget already spent and the pairs already asked are restored.
"""
from __future__ import annotations

import operator
from typing import Optional, Protocol, Sequence

import numpy as np

from .answer_log import AnswerLog, AnswerRecord, effective
from .config.schema import OracleConfig

Question = tuple[int, int, int, int]  # (query, candidate, round, step)
ANNOTATOR = "simulated"  # the answer log's ``annotator`` of the simulated oracle's answers


class OracleError(RuntimeError):
    """Base class of the oracle's refusals."""


class BudgetExhausted(OracleError):
    """The annotation budget is spent (paper §4.4: a fixed number of questions)."""


class AlreadyAsked(OracleError):
    """The unordered pair was asked before; ``answer`` holds the recorded answer (asking costs nothing)."""

    def __init__(self, query: int, candidate: int, answer: int) -> None:
        super().__init__(f"pair ({query}, {candidate}) was already asked; recorded answer {answer:+d}")
        self.query, self.candidate, self.answer = query, candidate, answer


class Oracle(Protocol):
    def ask(self, query: int, candidate: int, *, round: int, step: int, strategy: str) -> int:
        """+1 if ``candidate`` shows the same person as ``query``, else −1."""
        ...


class SimulatedOracle:
    """Ground-truth oracle over a pool of images with person ids ``pids`` (indices are pool positions)."""

    def __init__(self, pids: Sequence[int], cfg: OracleConfig, log: Optional[AnswerLog] = None,
                 paths: Optional[Sequence[str]] = None) -> None:
        self.pids = np.asarray(pids, dtype=np.int64)
        if self.pids.ndim != 1:
            raise ValueError(f"pids: expected a 1-D sequence of person ids, got shape {self.pids.shape}")
        if paths is not None and len(paths) != len(self.pids):
            raise ValueError(f"paths: {len(paths)} paths for {len(self.pids)} pids")
        if cfg.seed < 0:
            raise ValueError(f"OracleConfig.seed: {cfg.seed!r} must be >= 0")
        self.cfg, self.log, self.paths = cfg, log, paths
        self._answers: dict[tuple[int, int], int] = {}
        self.used = 0
        if log is not None and len(log):
            self._resume(log)

    @property
    def budget(self) -> Optional[int]:
        return self.cfg.budget

    @property
    def remaining(self) -> Optional[int]:
        """Questions left; None when the budget is unlimited."""
        return None if self.cfg.budget is None else max(self.cfg.budget - self.used, 0)

    def known(self, query: int, candidate: int) -> Optional[int]:
        """The recorded answer for the unordered pair, or None if it was never asked."""
        return self._answers.get(self._key(query, candidate))

    def ask(self, query: int, candidate: int, *, round: int, step: int, strategy: str) -> int:
        """Answer one question, logging it first; raises AlreadyAsked / BudgetExhausted."""
        key = self._key(query, candidate)
        if key in self._answers:
            raise AlreadyAsked(int(query), int(candidate), self._answers[key])
        if self.remaining == 0:
            raise BudgetExhausted(f"annotation budget of {self.cfg.budget} questions is spent")
        answer = self._truth(*key)
        if self.log is not None:
            q, c = int(query), int(candidate)
            self.log.append(AnswerRecord(
                query=q, candidate=c, answer=answer, step=step, round=round, strategy=strategy,
                query_path=None if self.paths is None else str(self.paths[q]),
                candidate_path=None if self.paths is None else str(self.paths[c]), annotator=ANNOTATOR))
        self._answers[key] = answer
        self.used += 1
        return answer

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        """``known`` of each (query, candidates) request's pairs."""
        return [[self.known(q, int(c)) for c in cands] for q, cands in requests]

    def ask_batch(self, questions: Sequence[Question], strategy: str) -> list[Optional[int]]:
        """(query, candidate, round, step) questions answered in order: a pair already answered is free, None
        from the first the budget cannot pay for (and for all after it)."""
        return ask_each(self, questions, strategy)

    def _key(self, query: int, candidate: int) -> tuple[int, int]:
        q, c = operator.index(query), operator.index(candidate)
        for name, i in (("query", q), ("candidate", c)):
            if not 0 <= i < len(self.pids):
                raise IndexError(f"{name} index {i} is out of range for a pool of {len(self.pids)} images")
        if q == c:
            raise ValueError(f"query and candidate are the same image (index {q})")
        return (q, c) if q < c else (c, q)

    def _truth(self, a: int, b: int) -> int:
        """Ground truth, flipped with probability error_rate by a generator seeded from (seed, pair)."""
        answer = 1 if self.pids[a] == self.pids[b] else -1
        if self.cfg.error_rate > 0 and np.random.default_rng([self.cfg.seed, a, b]).random() < self.cfg.error_rate:
            answer = -answer
        return answer

    def _resume(self, log: AnswerLog) -> None:
        table = effective(log.read())  # the answers in force: retracted ones and retraction records left out
        cols = (table.column(n).to_pylist() for n in ("query", "candidate", "answer", "question_id"))
        for q, c, y, qid in zip(*cols):
            key = self._key(q, c)
            if key in self._answers:
                raise ValueError(f"answer log {log.directory}: pair ({q}, {c}) is asked twice (question_id {qid})")
            if y != self._truth(*key):
                raise ValueError(
                    f"answer log {log.directory}: question_id {qid} answered {y:+d} for pair ({q}, {c}) but this "
                    "oracle answers otherwise; the log belongs to other pids, seed or error_rate")
            self._answers[key] = y
        self.used = len(self._answers)


def ask_each(oracle, questions: Sequence[Question], strategy: str) -> list[Optional[int]]:
    """``ask_batch`` over an oracle's one-at-a-time ``known`` / ``remaining`` / ``ask``: answers in order, a
    pair already answered free, None from the first question the budget cannot pay for (and all after it)."""
    out: list[Optional[int]] = []
    for q, c, r, step in questions:
        y = oracle.known(q, c)
        if y is None:
            if oracle.remaining == 0:
                break
            try:
                y = oracle.ask(q, c, round=r, step=step, strategy=strategy)
            except BudgetExhausted:
                break
        out.append(y)
    return out + [None] * (len(questions) - len(out))
