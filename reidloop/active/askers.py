"""The round's askers on top of an oracle: replaying an interrupted round, and a round's share of the budget.

Each offers the oracle's surface (``remaining``, ``used``, ``known``, ``ask``) and its batched form
(``known_batch``, ``ask_batch``) that the episode engine (``engine.run_round``) asks through; the inner
oracle may be the in-process ``SimulatedOracle`` or the labelling service's proxy.
"""
from __future__ import annotations

from typing import Sequence

from ..oracle import BudgetExhausted, Question, SimulatedOracle, ask_each


class ResumeDiverged(RuntimeError):
    """A resumed run asked something else than the interrupted run had asked at that point."""


class ReplayingOracle:
    """Deterministic replay of an interrupted round.

    The answers the log already holds for the round being redone are served back, free and in their
    original order, while the strategy (restored to its state at the round's start) asks the same
    questions again; after the last of them, questions go to the real oracle. Pairs still waiting to be
    replayed are not "known" yet, exactly as in the interrupted run at that point.
    """

    def __init__(self, oracle: SimulatedOracle, pending: list[tuple[int, int, int]], lenient: bool = False) -> None:
        """``lenient``: the replay of a round after an annotator's undo (``oracle.mode: human``). A retracted
        answer is gone from ``pending``, and an answer re-given may differ, so the strategy may ask something
        else from that point on: instead of raising ResumeDiverged, the answers not replayed yet become what
        they are in the log, answered pairs (free when asked again: they were paid for), and the question
        goes to the oracle."""
        self.oracle = oracle
        self.pending = list(pending)
        self._pending_keys = {(min(q, c), max(q, c)) for q, c, _ in pending}
        self.replayed = 0
        self.lenient = lenient
        self.diverged = False

    @property
    def remaining(self) -> int:
        """Questions this asker can still answer: the replays plus the real oracle's budget left."""
        return len(self.pending) + (self.oracle.remaining or 0)

    @property
    def used(self) -> int:
        return self.oracle.used

    def known(self, q: int, c: int) -> int | None:
        return None if (min(q, c), max(q, c)) in self._pending_keys else self.oracle.known(q, c)

    def ask(self, q: int, c: int, *, round: int, step: int, strategy: str) -> int:
        if not self.pending:
            return self.oracle.ask(q, c, round=round, step=step, strategy=strategy)
        pq_, pc, y = self.pending[0]
        if {pq_, pc} != {q, c} and self.lenient:
            self.diverged = True
            self.pending.clear()
            self._pending_keys.clear()
            y = self.oracle.known(q, c)
            return y if y is not None else self.oracle.ask(q, c, round=round, step=step, strategy=strategy)
        if {pq_, pc} != {q, c}:
            raise ResumeDiverged(f"resumed run asked ({q}, {c}) where the log has ({pq_}, {pc}); "
                                 "was the config or code changed between the runs?")
        self.pending.pop(0)
        self._pending_keys.discard((min(q, c), max(q, c)))
        self.replayed += 1
        return y

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[int | None]]:
        out = self.oracle.known_batch(requests)
        if not self._pending_keys:
            return out
        return [[None if (min(q, int(c)), max(q, int(c))) in self._pending_keys else y for c, y in zip(cands, ys)]
                for (q, cands), ys in zip(requests, out)]

    def ask_batch(self, questions: Sequence[Question], strategy: str) -> list[int | None]:
        """The logged answers first, in their order (a pair answered earlier is free as always); the rest in
        one batch to the oracle once nothing is left to replay."""
        out: list[int | None] = []
        i = 0
        while self.pending and i < len(questions):
            q, c, r, step = questions[i]
            y = self.known(q, c)
            out.append(y if y is not None else self.ask(q, c, round=r, step=step, strategy=strategy))
            i += 1
        return out + (self.oracle.ask_batch(list(questions[i:]), strategy) if i < len(questions) else [])


class RoundQuota:
    """An asker that answers at most ``quota`` questions, then refuses (``rounds: answers``).

    Wraps the round's asker (the oracle, or a :class:`ReplayingOracle` while a round is replayed), so a
    replayed round is cut at the same question as the interrupted one.
    """

    def __init__(self, asker, quota: int) -> None:
        self.asker, self.quota, self.asked = asker, quota, 0

    @property
    def remaining(self) -> int:
        return max(0, min(self.asker.remaining, self.quota - self.asked))

    @property
    def used(self) -> int:
        return self.asker.used

    def known(self, q: int, c: int) -> int | None:
        return self.asker.known(q, c)

    def ask(self, q: int, c: int, **kw) -> int:
        if self.asked >= self.quota:
            raise BudgetExhausted(f"the round's {self.quota} answers are spent")
        y = self.asker.ask(q, c, **kw)
        self.asked += 1
        return y

    def known_batch(self, requests: list[tuple[int, Sequence[int]]]) -> list[list[int | None]]:
        return self.asker.known_batch(requests)

    def ask_batch(self, questions: Sequence[Question], strategy: str) -> list[int | None]:
        return ask_each(self, questions, strategy)
