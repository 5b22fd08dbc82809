"""The human oracle: the loop's questions answered by people through a :class:`~reidloop.annotation.QuestionDesk`.

:class:`HumanOracle` has the surface the loop asks through, as :class:`~reidloop.oracle.SimulatedOracle` has
(``budget``, ``remaining``, ``used``, ``known``, ``known_batch``, ``ask``, ``ask_batch``), so the episode engine
(``reidloop.active.engine.Answers``) and the askers (``reidloop.active.askers``) take it unchanged; the answers
come from the desk instead of ground truth.

``ask_batch`` keeps ``ask_each``'s rules exactly: questions in order, a pair already answered is free (also
when it comes twice in one batch), None from the first question the budget cannot pay for and for all after
it. The new pairs are posted to the desk together, and the call blocks until people have answered all of them
(``timeout_s``, default None: for ever; on TimeoutError nothing is logged or counted, and asking again re-posts
the same desk questions, so a retry loses nothing). Each answer goes into the answer log, in the order of the
questions, with who answered (``annotator``) and when they answered (``time``), and the log is flushed
*before* the answers are returned.

**Undo and what the loop must do about it.** :meth:`HumanOracle.undo` (the page's U key; never undo on the
desk directly) takes back an annotator's latest answer while its round is open. If that answer had already
been returned to the loop, a retraction record is appended to the log (and flushed), the pair is no longer
``known``, ``used`` goes down by one (the budget pays again when the pair is asked again) and a
:class:`Retraction` is recorded: ``retractions`` counts them and ``retracted_since(mark)`` lists those after
``mark``. The agent has meanwhile acted on the answer, so the round must be replayed. What a later change of
the loop (not made here) must do, per round r:

1. ``mark = oracle.retractions`` before the round's episodes start.
2. After the round's asking ends, call ``oracle.close_round(r)`` *first* — from then on no answer of round r
   can be undone — and only *then* check ``oracle.retracted_since(mark)``: every undo of round r that was
   accepted is in it, none can come later. (Checking before closing leaves a window for an unseen undo.)
3. If it is non-empty: restore the strategy to the round's start (``strategy.restore_round_start()``, as the
   Ray loop's recovery does) and run the round again from its start as a crash resume does, from the log read
   through :func:`reidloop.answer_log.effective` (the retracted answers are gone from it). Unlike a crash
   resume, the replay may diverge where the retracted answer was: an answer re-given after the undo has a
   later question_id than the answers given after it, and a changed answer changes what the agent asks next.
   So the replaying asker must serve the round's effective answers while the strategy asks the same pairs in
   the same order, and from the first divergence on treat the rest of them as free known answers (they were
   paid for and stay in the log) instead of raising ``ResumeDiverged``; the undone pair itself, asked again,
   is posted again and waits on the desk (where it is already queued at the front, or already re-answered).
   Repeat from 1 until a round ends with no retraction. The fine-tune of round r starts only after step 2.

The oracle's lock (``lock``) serialises the loop's ``ask_batch`` with the page's ``undo``; both append to the
log. Anything else that touches the log while a page can undo (read, flush, compact) must hold ``lock`` too.

On construction over a non-empty log it resumes: the pairs answered and the budget spent are restored from the
log's :func:`~reidloop.answer_log.effective` answers (retracted answers and retraction records not counted);
nothing is compared with ground truth. The desk is not restored: answers given before the restart can no
longer be undone.
"""
from __future__ import annotations

import operator
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from ..answer_log import AnswerLog, AnswerRecord, effective
from ..config.schema import OracleConfig
from ..oracle import AlreadyAsked, BudgetExhausted, Question
from .desk import QuestionDesk, Undone
from .journal import DeskJournal


@dataclass(frozen=True)
class Retraction:
    """An answer the loop had received, taken back by ``annotator``.

    ``question_id``: the log's id of the retracted answer, and ``record_id`` the retraction record's (both None
    without a log); ``desk_id``: the desk question, waiting again.
    """

    desk_id: int
    query: int
    candidate: int
    round: int
    step: int
    answer: int  # the answer taken back
    annotator: str
    question_id: Optional[int] = None
    record_id: Optional[int] = None


class HumanOracle:
    """The oracle of ``oracle.mode: human`` over a pool of ``pool_size`` images (indices are pool positions)."""

    def __init__(self, pool_size: int, desk: QuestionDesk, cfg: OracleConfig, log: Optional[AnswerLog] = None,
                 paths: Optional[Sequence[str]] = None, timeout_s: Optional[float] = None,
                 journal: Optional[DeskJournal] = None) -> None:
        self.pool_size = operator.index(pool_size)
        if self.pool_size < 0:
            raise ValueError(f"pool_size: {pool_size!r} must be >= 0")
        if paths is not None and len(paths) != self.pool_size:
            raise ValueError(f"paths: {len(paths)} paths for a pool of {self.pool_size} images")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s: {timeout_s!r} must be > 0 or None (wait for ever)")
        self.desk, self.cfg, self.log, self.paths, self.timeout_s = desk, cfg, log, paths, timeout_s
        self.journal = journal
        self.lock = threading.RLock()
        self._answers: dict[tuple[int, int], int] = {}
        self._returned: dict[int, Optional[int]] = {}  # desk id -> log question_id of the answer the loop got
        self._retractions: list[Retraction] = []
        self.used = 0
        if log is not None and len(log):
            self._resume(log)
        # answers people gave that the log does not hold yet (a restart while their batch waited): served
        # without asking again, in the order the loop asks for them
        self._journaled = journal.pending(self._answers) if journal is not None else {}
        if journal is not None:
            journal.rewrite(self._journaled)  # drop what the log holds (and a line torn by a crash)

    # ---------------------------------------------------------------- the oracle's surface
    @property
    def budget(self) -> Optional[int]:
        return self.cfg.budget

    @property
    def remaining(self) -> Optional[int]:
        """Questions left; None when the budget is unlimited."""
        return None if self.cfg.budget is None else max(self.cfg.budget - self.used, 0)

    def known(self, query: int, candidate: int) -> Optional[int]:
        """The answer in force for the unordered pair, or None if it was never answered (or was retracted)."""
        with self.lock:
            return self._answers.get(self._key(query, candidate))

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[Optional[int]]]:
        """``known`` of each (query, candidates) request's pairs."""
        with self.lock:
            return [[self._answers.get(self._key(q, int(c))) for c in cands] for q, cands in requests]

    def ask(self, query: int, candidate: int, *, round: int, step: int, strategy: str) -> int:
        """Ask one question and wait for its answer; raises AlreadyAsked / BudgetExhausted like SimulatedOracle."""
        with self.lock:
            y = self._answers.get(self._key(query, candidate))
            if y is not None:
                raise AlreadyAsked(int(query), int(candidate), y)
            if self.remaining == 0:
                raise BudgetExhausted(f"annotation budget of {self.cfg.budget} questions is spent")
        y = self.ask_batch([(query, candidate, round, step)], strategy)[0]
        if y is None:  # the budget went between the check and the ask
            raise BudgetExhausted(f"annotation budget of {self.cfg.budget} questions is spent")
        return y

    def ask_batch(self, questions: Sequence[Question], strategy: str) -> list[Optional[int]]:
        """(query, candidate, round, step) questions answered in order (``ask_each``'s rules); blocks until people
        have answered the new ones, which are logged (annotator, time) and flushed before this returns."""
        out: list[Optional[int]] = [None] * len(questions)
        new: list[tuple[int, tuple[int, int], tuple[int, int, int, int]]] = []  # (index, pair, question)
        repeats: list[tuple[int, tuple[int, int]]] = []  # a new pair's later copies in this batch: free
        with self.lock:
            budget_left = self.remaining
            first: dict[tuple[int, int], int] = {}
            for i, (q, c, r, step) in enumerate(questions):
                key = self._key(q, c)
                y = self._answers.get(key)
                if y is not None:
                    out[i] = y
                elif key in first:
                    repeats.append((i, key))
                elif budget_left is not None and len(new) >= budget_left:
                    break  # None for this question and every one after it
                else:
                    first[key] = i
                    new.append((i, key, (int(q), int(c), operator.index(r), operator.index(step))))
        if not new:
            return out
        with self.lock:
            to_post = [n for n in new if n[1] not in self._journaled]
        ids = self.desk.post([question for _, _, question in to_post], strategy) if to_post else []
        posted = {key: did for (_, key, _), did in zip(to_post, ids)}
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if ids:
                self.desk.wait(ids, left)
            with self.lock:
                got = self.desk.answers(ids)
                if len(got) < len(set(ids)):
                    continue  # an answer was undone between the wake-up and the lock: wait for it again
                for i, key, (q, c, r, step) in new:
                    did = posted.get(key)
                    if did is not None:
                        a = got[did]
                        answer, annotator, when = a.answer, a.annotator, a.answered_at
                    else:  # given before a restart, kept by the journal
                        answer, annotator, when = self._journaled[key]
                    qid = None
                    if self.log is not None:
                        qid = self.log.append(AnswerRecord(
                            query=q, candidate=c, answer=answer, step=step, round=r, strategy=strategy,
                            query_path=None if self.paths is None else str(self.paths[q]),
                            candidate_path=None if self.paths is None else str(self.paths[c]),
                            time=when, annotator=annotator)).question_id
                    self._answers[key] = answer
                    if did is not None:
                        self._returned[did] = qid
                    self._journaled.pop(key, None)
                    self.used += 1
                    out[i] = answer
                if self.log is not None:
                    self.log.flush()
                for i, key in repeats:
                    out[i] = self._answers[key]
                return out

    # ---------------------------------------------------------------- undo
    def undo(self, annotator: str) -> Optional[Undone]:
        """The annotator's latest answer taken back (``QuestionDesk.undo``) while its round is open: what the desk
        undid, or None if there is nothing to undo.

        An answer the loop had already received is retracted in the log (flushed), is no longer known nor paid
        for, and is reported by ``retracted_since``. One it had not received yet is only reopened on the desk:
        the ``ask_batch`` waiting for it waits for its new answer, and the log never saw it.
        """
        with self.lock:
            undone = self.desk.undo(annotator)
            if undone is not None and self.journal is not None:
                self.journal.undo(self._key(undone.query, undone.candidate))
            if undone is None or undone.id not in self._returned:
                return undone
            qid = self._returned.pop(undone.id)
            record_id = None
            if self.log is not None and qid is not None:
                record_id = self.log.retract(qid, annotator=annotator).question_id
                self.log.flush()
            del self._answers[self._key(undone.query, undone.candidate)]
            self.used -= 1
            retraction = Retraction(undone.id, undone.query, undone.candidate, undone.round, undone.step,
                                    undone.answer, annotator, qid, record_id)
            self._retractions.append(retraction)
            return undone

    def record(self, desk_id: int) -> bool:
        """Make the answer just given to desk question ``desk_id`` durable in the journal (the page calls this
        before it tells the annotator the answer counted); False if it is no longer answered (undone)."""
        if self.journal is None:
            return True
        got = self.desk.answers([desk_id]).get(desk_id)
        if got is None:
            return False
        self.journal.answer(self._key(got.query, got.candidate), got.answer, got.annotator, got.answered_at)
        return True

    def read(self):
        """The answer log's table (retractions included), read under ``lock``."""
        if self.log is None:
            raise ValueError("this HumanOracle keeps no answer log")
        with self.lock:
            return self.log.read()

    def close_round(self, round: int) -> None:
        """No answer of rounds <= ``round`` can be undone from now on (call before fine-tuning on them)."""
        self.desk.close_round(round)

    @property
    def retractions(self) -> int:
        """How many answers the loop had received were retracted since this oracle started (a mark for
        ``retracted_since``)."""
        with self.lock:
            return len(self._retractions)

    def retracted_since(self, mark: int) -> list[Retraction]:
        """The retractions after ``mark`` (a value ``retractions`` had), oldest first."""
        with self.lock:
            return list(self._retractions[mark:])

    # ---------------------------------------------------------------- internals
    def _key(self, query: int, candidate: int) -> tuple[int, int]:
        q, c = operator.index(query), operator.index(candidate)
        for name, i in (("query", q), ("candidate", c)):
            if not 0 <= i < self.pool_size:
                raise IndexError(f"{name} index {i} is out of range for a pool of {self.pool_size} images")
        if q == c:
            raise ValueError(f"query and candidate are the same image (index {q})")
        return (q, c) if q < c else (c, q)

    def _resume(self, log: AnswerLog) -> None:
        table = effective(log.read())
        cols = (table.column(n).to_pylist() for n in ("query", "candidate", "answer", "question_id"))
        for q, c, y, qid in zip(*cols):
            key = self._key(q, c)
            if key in self._answers:
                raise ValueError(f"answer log {log.directory}: pair ({q}, {c}) is answered twice (question_id {qid})")
            self._answers[key] = y
        self.used = len(self._answers)
