"""The question desk: where the agent's questions wait for people to answer them (``oracle.mode: human``).

The model, in five rules:

**Queue.** :meth:`QuestionDesk.post` turns the agent's questions (query, candidate, round, step) into desk
questions, each with a desk id from a sequence (0, 1, 2, ...). A pair is one question whichever way round it
is asked: posting a pair that is already waiting or answered returns its existing id, so nothing is ever
queued twice (re-posting after a timeout or a crash of the asker is safe). Waiting questions are handed out
oldest first.

**Leases.** :meth:`~QuestionDesk.take` hands an annotator a :class:`Ticket`: the oldest waiting question that
nobody holds (or whose holder's lease has run out), theirs for ``lease_s`` seconds. A question is with one
person at a time, and a person holds one question at a time. Taking again while the lease runs returns the
same ticket with the lease renewed, so a reloaded or reconnecting page shows the same question. A lease that
runs out puts the question back at its place in the queue; expiry is noticed when someone next calls
``take`` or ``status`` (nothing runs in the background).

**Answers are idempotent.** :meth:`~QuestionDesk.answer` with +1 (same person) or −1 (different person)
counts once. The first answer from anyone the question was handed to wins — even from a holder whose lease
ran out after it was handed to someone else; every later answer (the same one sent twice, or the other
holder's) returns False and changes nothing. An id the desk never gave out raises :class:`UnknownQuestion`;
an annotator the question was never handed to raises :class:`NotOffered`.

**Skip** (answer None). The question goes to the back of the queue and is never offered to that annotator
again. A question every active annotator skipped therefore waits until someone new takes it; ``status()``
counts waiting questions that someone skipped as ``skipped``, so the page can show them. Skips are not in
the undo history.

**Undo.** :meth:`~QuestionDesk.undo` takes back the annotator's latest answer (a stack per annotator: pressing
U twice undoes two) while its round is open. The question is waiting again, at the front of the queue and
leased at once to the same annotator, so it is the next thing they see; the ticket they held goes back to
the queue at its place. :meth:`~QuestionDesk.close_round` (the loop calls it before the CNN is fine-tuned on
a round's answers) ends undo for answers of rounds <= that round: undo then returns None. On the desk an undo
simply reopens the question; the answer log is append-only, so :class:`~reidloop.annotation.HumanOracle`
records the undo of an answer it had already logged as a *retraction record* (``reidloop.answer_log``). Undo
through the oracle, never on the desk directly, once an oracle asks through the desk.

**Waiting.** :meth:`~QuestionDesk.wait` blocks the asker until every given id is answered.

Threads and time: one lock guards all state and one Condition on it wakes the waiters on every answer.
``clock`` (default ``time.monotonic``) is the only time source of leases, so tests move time by hand;
``wall_clock`` stamps when an answer was given (UTC, for the answer log); ``wait``'s timeout is real time.
``on_change(event)`` hears every state change as a :class:`DeskEvent`; it is called after the lock is
released (it may call back into the desk), and ``event.seq`` orders events that race. An exception it raises
is logged, never propagated: the state change it reports has happened.

The desk lives in memory. The durable truth is the answer log the oracle writes: after a restart the desk is
empty, the loop asks again what it still needs, and the undo history of answers given before the restart is
gone. Finding the next question scans the waiting ones (fine for the hundreds a run has waiting).
"""
from __future__ import annotations

import logging
import math
import operator
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional, Sequence

log = logging.getLogger(__name__)


class UnknownQuestion(KeyError):
    """An id the desk never gave out."""

    def __init__(self, question_id) -> None:
        super().__init__(question_id)
        self.question_id = question_id

    def __str__(self) -> str:
        return f"the question desk has no question {self.question_id!r}"


class NotOffered(ValueError):
    """An answer from an annotator the question was never handed to."""


@dataclass(frozen=True)
class Ticket:
    """A question handed to ``annotator`` until ``leased_until`` (in the desk's ``clock`` seconds)."""

    id: int
    query: int
    candidate: int
    round: int
    step: int
    strategy: str
    annotator: str
    leased_until: float


@dataclass(frozen=True)
class Answered:
    """An answered question: who answered (``annotator``), what (+1 / −1) and when (UTC)."""

    id: int
    query: int
    candidate: int
    round: int
    step: int
    strategy: str
    answer: int
    annotator: str
    answered_at: datetime


@dataclass(frozen=True)
class Undone:
    """What :meth:`QuestionDesk.undo` took back: the question and its old ``answer``."""

    id: int
    query: int
    candidate: int
    round: int
    step: int
    strategy: str
    answer: int
    annotator: str


@dataclass(frozen=True)
class DeskEvent:
    """One state change, for ``on_change``. ``kind``: posted, leased, answered, skipped, undone, round_closed."""

    seq: int
    kind: str
    question_id: Optional[int] = None
    annotator: Optional[str] = None
    answer: Optional[int] = None
    round: Optional[int] = None


@dataclass
class _Question:
    id: int
    query: int
    candidate: int
    round: int
    step: int
    strategy: str
    order: int  # place in the queue: lowest first
    holder: Optional[str] = None
    leased_until: float = -math.inf
    offered: set = field(default_factory=set)  # everyone it was handed to: whose answer is valid
    skipped_by: set = field(default_factory=set)
    answer: Optional[int] = None
    annotator: Optional[str] = None
    answered_at: Optional[datetime] = None


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class QuestionDesk:
    """The thread-safe queue of questions people answer (see the module docstring for the rules)."""

    def __init__(self, lease_s: float = 120.0, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = _utc_now,
                 on_change: Optional[Callable[[DeskEvent], None]] = None) -> None:
        self.lease_s = self._check_lease(lease_s)
        self.clock, self.wall_clock, self.on_change = clock, wall_clock, on_change
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._questions: dict[int, _Question] = {}
        self._by_pair: dict[tuple[int, int], int] = {}
        self._waiting: set[int] = set()  # not answered: in the queue, or leased
        self._held: dict[str, int] = {}  # annotator -> the id they were last handed (the lease may have run out)
        self._history: dict[str, list[int]] = {}  # annotator -> ids they answered, oldest first (the undo stack)
        self._closed_through: Optional[int] = None  # answers of rounds <= this can no longer be undone
        self._back = 0  # the next place at the back of the queue
        self._front = 0  # the last place taken at its front
        self._seq = 0

    # ---------------------------------------------------------------- the asker's side
    def post(self, questions: Sequence[tuple[int, int, int, int]], strategy: str) -> list[int]:
        """Queue (query, candidate, round, step) questions; their desk ids, in order.

        A pair already waiting or answered (either way round) keeps its id and is not queued again; a waiting
        one takes the new question's round, step and strategy (the round now asking it).
        """
        parsed = []
        for item in questions:
            q, c, r, step = (operator.index(v) for v in item)
            if q == c:
                raise ValueError(f"question ({q}, {c}): query and candidate are the same image")
            parsed.append((q, c, r, step))
        ids, events = [], []
        with self._lock:
            for q, c, r, step in parsed:
                key = (q, c) if q < c else (c, q)
                qid = self._by_pair.get(key)
                if qid is None:
                    qid = len(self._questions)
                    self._questions[qid] = _Question(qid, q, c, r, step, strategy, order=self._next_back())
                    self._by_pair[key] = qid
                    self._waiting.add(qid)
                    events.append(self._event("posted", qid, round=r))
                elif self._questions[qid].answer is None:
                    found = self._questions[qid]
                    found.round, found.step, found.strategy = r, step, strategy
                ids.append(qid)
        self._emit(events)
        return ids

    def wait(self, ids: Iterable[int], timeout_s: Optional[float] = None) -> dict[int, int]:
        """Block until every id is answered; id -> answer (+1 / −1). TimeoutError after ``timeout_s`` seconds
        (real time; None waits for ever), naming how many are still open."""
        ids = list(ids)
        with self._lock:
            for qid in ids:
                self._get(qid)
            if not self._answered.wait_for(lambda: all(self._questions[i].answer is not None for i in ids),
                                           timeout=timeout_s):
                open_ = sorted({i for i in ids if self._questions[i].answer is None})
                raise TimeoutError(f"{len(open_)} of {len(set(ids))} questions still unanswered after {timeout_s} s "
                                   f"(desk ids {open_[:10]}{' ...' if len(open_) > 10 else ''})")
            return {i: self._questions[i].answer for i in ids}

    def answers(self, ids: Iterable[int]) -> dict[int, Answered]:
        """The answered ones of ``ids``, with who answered and when (unanswered ids are left out)."""
        with self._lock:
            out = {}
            for qid in ids:
                q = self._get(qid)
                if q.answer is not None:
                    out[qid] = Answered(q.id, q.query, q.candidate, q.round, q.step, q.strategy, q.answer,
                                        q.annotator, q.answered_at)
            return out

    def answers_for(self, pairs: Iterable[tuple[int, int]]) -> list[Optional[int]]:
        """The answer given on the desk to each (query, candidate) pair (either way round), or None: not
        posted, waiting, or undone."""
        with self._lock:
            out = []
            for q, c in pairs:
                qid = self._by_pair.get((min(q, c), max(q, c)))
                out.append(None if qid is None else self._questions[qid].answer)
            return out

    def close_round(self, round: int) -> None:
        """Answers of rounds <= ``round`` can no longer be undone (the CNN is being fine-tuned on them)."""
        round = operator.index(round)
        with self._lock:
            if self._closed_through is None or round > self._closed_through:
                self._closed_through = round
            events = [self._event("round_closed", round=round)]
        self._emit(events)

    # ---------------------------------------------------------------- the annotators' side
    def take(self, annotator: str, lease_s: Optional[float] = None) -> Optional[Ticket]:
        """The annotator's ticket: the one they hold if its lease still runs (renewed), else the oldest waiting
        question nobody holds, none they skipped; None when nothing waits for them."""
        self._check_annotator(annotator)
        lease = self.lease_s if lease_s is None else self._check_lease(lease_s)
        with self._lock:
            now = self.clock()
            held = self._held.pop(annotator, None)
            if held is not None:
                q = self._questions[held]
                if q.answer is None and q.holder == annotator and q.leased_until > now:
                    self._lease(q, annotator, now + lease)
                    ticket, events = self._ticket(q), [self._event("leased", q.id, annotator)]
                    return self._emit(events, ticket)
                if q.holder == annotator:  # the lease ran out
                    q.holder = None
            best = None
            for qid in self._waiting:
                q = self._questions[qid]
                if annotator in q.skipped_by or (q.holder is not None and q.leased_until > now):
                    continue
                if best is None or q.order < best.order:
                    best = q
            if best is None:
                return None
            if best.holder is not None and self._held.get(best.holder) == best.id:
                del self._held[best.holder]  # its holder's lease ran out
            self._lease(best, annotator, now + lease)
            ticket, events = self._ticket(best), [self._event("leased", best.id, annotator)]
        return self._emit(events, ticket)

    def answer(self, ticket_id: int, annotator: str, answer: Optional[int]) -> bool:
        """+1 (same person), −1 (different) or None (skip) for question ``ticket_id``; whether it counted.

        The first answer wins; a repeat, or a later answer of another holder, returns False. A skip returns
        False when the question is answered already or this annotator skipped it before.
        """
        self._check_annotator(annotator)
        if answer is not None and (isinstance(answer, bool) or answer not in (1, -1)):
            raise ValueError(f"answer: {answer!r} must be +1 (same person), -1 (different person) or None (skip)")
        with self._lock:
            q = self._get(ticket_id)
            if q.answer is not None:
                return False
            if annotator not in q.offered:
                raise NotOffered(f"question {ticket_id} was never handed to annotator {annotator!r}")
            if answer is None:
                if annotator in q.skipped_by:
                    return False
                q.skipped_by.add(annotator)
                if q.holder is None or q.holder == annotator or q.leased_until <= self.clock():
                    if q.holder is not None and self._held.get(q.holder) == q.id:
                        del self._held[q.holder]
                    q.holder, q.order = None, self._next_back()  # to the back of the queue
                events = [self._event("skipped", q.id, annotator)]
            else:
                q.answer, q.annotator, q.answered_at = int(answer), annotator, self.wall_clock()
                self._waiting.discard(q.id)
                if q.holder is not None and self._held.get(q.holder) == q.id:
                    del self._held[q.holder]
                q.holder = None
                self._history.setdefault(annotator, []).append(q.id)
                self._answered.notify_all()
                events = [self._event("answered", q.id, annotator, q.answer)]
        self._emit(events)
        return True

    def undo(self, annotator: str) -> Optional[Undone]:
        """Take back the annotator's latest answer if its round is open; what was undone, or None.

        The question waits again, at the front of the queue, leased to this annotator (the ticket they held
        goes back to its place in the queue).
        """
        self._check_annotator(annotator)
        with self._lock:
            stack = self._history.get(annotator)
            if not stack:
                return None
            q = self._questions[stack[-1]]
            if self._closed_through is not None and q.round <= self._closed_through:
                return None
            stack.pop()
            undone = Undone(q.id, q.query, q.candidate, q.round, q.step, q.strategy, q.answer, annotator)
            q.answer = q.annotator = q.answered_at = None
            self._waiting.add(q.id)
            held = self._held.pop(annotator, None)
            if held is not None and self._questions[held].holder == annotator:
                self._questions[held].holder = None  # back to its place in the queue
            self._front -= 1
            q.order = self._front
            self._lease(q, annotator, self.clock() + self.lease_s)
            events = [self._event("undone", q.id, annotator, undone.answer, round=q.round)]
        return self._emit(events, undone)

    # ---------------------------------------------------------------- reading
    def status(self) -> dict:
        """Counts: ``pending`` (waiting, nobody holds them), ``leased``, ``answered``, ``skipped`` (waiting ones
        someone skipped), ``questions`` (all), ``closed_through`` (the last round closed to undo, or None), and
        ``annotators``: each annotator's answers in force."""
        with self._lock:
            now = self.clock()
            leased = sum(1 for i in self._waiting
                         if self._questions[i].holder is not None and self._questions[i].leased_until > now)
            return {"pending": len(self._waiting) - leased, "leased": leased,
                    "answered": len(self._questions) - len(self._waiting),
                    "skipped": sum(1 for i in self._waiting if self._questions[i].skipped_by),
                    "questions": len(self._questions), "closed_through": self._closed_through,
                    "annotators": {a: len(ids) for a, ids in sorted(self._history.items())}}

    def __len__(self) -> int:
        with self._lock:
            return len(self._questions)

    # ---------------------------------------------------------------- internals (the lock is held)
    def _get(self, qid) -> _Question:
        try:
            return self._questions[operator.index(qid)]
        except (KeyError, TypeError):
            raise UnknownQuestion(qid) from None

    def _next_back(self) -> int:
        self._back += 1
        return self._back

    def _lease(self, q: _Question, annotator: str, until: float) -> None:
        q.holder, q.leased_until = annotator, until
        q.offered.add(annotator)
        self._held[annotator] = q.id

    @staticmethod
    def _ticket(q: _Question) -> Ticket:
        return Ticket(q.id, q.query, q.candidate, q.round, q.step, q.strategy, q.holder, q.leased_until)

    def _event(self, kind: str, qid: Optional[int] = None, annotator: Optional[str] = None,
               answer: Optional[int] = None, round: Optional[int] = None) -> DeskEvent:
        self._seq += 1
        if round is None and qid is not None:
            round = self._questions[qid].round
        return DeskEvent(self._seq, kind, qid, annotator, answer, round)

    # ---------------------------------------------------------------- internals (no lock)
    def _emit(self, events: list[DeskEvent], result=None):
        if self.on_change is not None:
            for e in events:
                try:
                    self.on_change(e)
                except Exception:  # the change happened; a broken listener must not undo the caller's success
                    log.exception("question desk: on_change failed on %s", e)
        return result

    @staticmethod
    def _check_lease(lease_s: float) -> float:
        if not (isinstance(lease_s, (int, float)) and math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"lease_s: {lease_s!r} must be a finite number of seconds > 0")
        return float(lease_s)

    @staticmethod
    def _check_annotator(annotator: str) -> None:
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError(f"annotator: {annotator!r} must be a non-empty name")
