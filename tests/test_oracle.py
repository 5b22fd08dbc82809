"""SimulatedOracle: ground-truth answers, per-pair noise, hard budget, no repeats, log-first, resume."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from reidloop.answer_log import AnswerLog
from reidloop.config.schema import OracleConfig
from reidloop.oracle import AlreadyAsked, BudgetExhausted, SimulatedOracle

PIDS = [0, 0, 1, 1, 2, 2, 2, 3]
KW = dict(round=0, step=0, strategy="dral")


def test_answers_match_ids():
    oracle = SimulatedOracle(PIDS, OracleConfig())
    for a, b in itertools.combinations(range(len(PIDS)), 2):
        assert oracle.ask(a, b, **KW) == (1 if PIDS[a] == PIDS[b] else -1)
    assert oracle.used == 28 and oracle.remaining is None


def test_error_rate_is_approx_e_and_fixed_per_pair():
    pids = np.arange(200) // 2
    pairs = list(itertools.combinations(range(200), 2))[::4]  # ~5000 pairs
    cfg = OracleConfig(error_rate=0.2, seed=3)
    first = SimulatedOracle(pids, cfg)
    answers = {p: first.ask(*p, **KW) for p in pairs}
    truth = {p: 1 if pids[p[0]] == pids[p[1]] else -1 for p in pairs}
    wrong = np.mean([answers[p] != truth[p] for p in pairs])
    assert 0.18 < wrong < 0.22
    # Another oracle asking in reverse order, with the pair reversed, gives the same answers.
    second = SimulatedOracle(pids, cfg)
    assert all(second.ask(b, a, **KW) == answers[(a, b)] for a, b in reversed(pairs))
    # A different seed flips different pairs.
    third = SimulatedOracle(pids, OracleConfig(error_rate=0.2, seed=4))
    assert sum(third.ask(*p, **KW) != answers[p] for p in pairs[:1000]) > 100


def test_budget_is_a_hard_stop():
    oracle = SimulatedOracle(PIDS, OracleConfig(budget=2))
    oracle.ask(0, 1, **KW)
    oracle.ask(0, 2, **KW)
    assert oracle.remaining == 0
    with pytest.raises(BudgetExhausted):
        oracle.ask(0, 3, **KW)
    assert oracle.used == 2 and oracle.known(0, 3) is None
    with pytest.raises(AlreadyAsked):  # repeats are answered from the record even past the budget
        oracle.ask(1, 0, **KW)


def test_already_asked_either_order_costs_nothing():
    oracle = SimulatedOracle(PIDS, OracleConfig(budget=5))
    assert oracle.ask(2, 3, **KW) == 1
    for a, b in ((2, 3), (3, 2)):
        with pytest.raises(AlreadyAsked) as info:
            oracle.ask(a, b, **KW)
        assert info.value.answer == 1
    assert oracle.used == 1 and oracle.remaining == 4
    assert oracle.known(3, 2) == 1 and oracle.known(0, 7) is None


def test_bad_indices():
    oracle = SimulatedOracle(PIDS, OracleConfig())
    with pytest.raises(ValueError, match="same image"):
        oracle.ask(3, 3, **KW)
    with pytest.raises(IndexError, match="candidate index 8"):
        oracle.ask(0, 8, **KW)
    with pytest.raises(IndexError, match="query index -1"):
        oracle.ask(-1, 0, **KW)
    assert oracle.used == 0


class CheckingLog(AnswerLog):
    """Records, at each append, how many answers the oracle had handed out."""

    def __init__(self, directory, oracle_box):
        super().__init__(directory)
        self.box = oracle_box
        self.used_at_append: list[int] = []

    def append(self, record):
        self.used_at_append.append(self.box[0].used)
        return super().append(record)


def test_every_answer_is_logged_before_return(tmp_path):
    box: list = []
    log = CheckingLog(tmp_path, box)
    oracle = SimulatedOracle(PIDS, OracleConfig(error_rate=0.3), log, paths=[f"img{i}.jpg" for i in range(8)])
    box.append(oracle)
    got = [oracle.ask(0, c, round=1, step=c, strategy="random") for c in range(1, 6)]
    assert log.used_at_append == [0, 1, 2, 3, 4]  # appended before `used` moved on and before returning
    on_disk = AnswerLog(tmp_path).records()  # flush_every=1: durable already
    assert [r.answer for r in on_disk] == got
    assert [(r.candidate, r.step, r.round, r.strategy) for r in on_disk] == [(c, c, 1, "random") for c in range(1, 6)]
    assert on_disk[0].query_path == "img0.jpg" and on_disk[2].candidate_path == "img3.jpg"


def test_resume_from_log_restores_used_and_asked(tmp_path):
    cfg = OracleConfig(error_rate=0.25, budget=6, seed=1)
    first = SimulatedOracle(PIDS, cfg, AnswerLog(tmp_path))
    got = {(0, c): first.ask(0, c, **KW) for c in (1, 2, 3, 4)}
    resumed = SimulatedOracle(PIDS, cfg, AnswerLog(tmp_path))
    assert resumed.used == 4 and resumed.remaining == 2
    for (a, b), y in got.items():
        assert resumed.known(b, a) == y
    with pytest.raises(AlreadyAsked):
        resumed.ask(3, 0, **KW)
    resumed.ask(5, 6, **KW)
    resumed.ask(5, 7, **KW)
    with pytest.raises(BudgetExhausted):
        resumed.ask(6, 7, **KW)
    assert len(AnswerLog(tmp_path)) == 6


def test_resume_rejects_a_log_of_other_ids(tmp_path):
    with AnswerLog(tmp_path) as log:
        SimulatedOracle(PIDS, OracleConfig(), log).ask(0, 1, **KW)  # same person: +1
    with pytest.raises(ValueError, match="question_id 0"):
        SimulatedOracle([0, 1, 1, 1, 2, 2, 2, 3], OracleConfig(), AnswerLog(tmp_path))


def test_resume_counts_the_answers_in_force_only(tmp_path):
    cfg = OracleConfig(budget=4)
    first = SimulatedOracle(PIDS, cfg, AnswerLog(tmp_path))
    first.ask(0, 1, **KW)
    first.ask(0, 2, **KW)
    log = AnswerLog(tmp_path)
    assert [r.annotator for r in log.records()] == ["simulated", "simulated"]
    log.retract(1, annotator="someone")  # a retraction (human mode's undo) withdraws (0, 2)
    resumed = SimulatedOracle(PIDS, cfg, AnswerLog(tmp_path))
    assert resumed.used == 1 and resumed.remaining == 3
    assert resumed.known(1, 0) == 1 and resumed.known(0, 2) is None
    assert resumed.ask(2, 0, **KW) == -1  # asked again, paid again
