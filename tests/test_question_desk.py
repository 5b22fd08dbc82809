"""QuestionDesk and HumanOracle (issue 18's Ray-free core): one person per question, answers that count once,
leases that run out, skip, undo as a retraction, and a human oracle that keeps SimulatedOracle's rules.

Time is a fake clock moved by hand; threads meet through the desk's own events, never through sleeps. Every
blocking call has a timeout (a failure, not synchronisation), so a bug fails a test instead of hanging it.
"""
from __future__ import annotations

import queue
import sys
import threading
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import wait_for
from reidloop.annotation import DeskEvent, HumanOracle, NotOffered, QuestionDesk, Undone, UnknownQuestion
from reidloop.answer_log import SCHEMA, SCHEMA_V1, AnswerLog, effective
from reidloop.config import ConfigError, LoopJob
from reidloop.config.loader import load_config
from reidloop.config.schema import OracleConfig
from reidloop.oracle import AlreadyAsked, BudgetExhausted, SimulatedOracle

PIDS = [0, 0, 1, 1, 2, 2, 2, 3, 4, 4]
JOIN_S = 5.0  # a thread still alive after this is a bug


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def truth(q: int, c: int) -> int:
    return 1 if PIDS[q] == PIDS[c] else -1


def run_threads(targets) -> None:
    errors: list[BaseException] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported to the test below
                errors.append(e)
        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- the desk
def test_a_pair_is_queued_once_whichever_way_round():
    desk = QuestionDesk(clock=Clock())
    assert desk.post([(0, 1, 1, 0), (2, 3, 1, 1)], "dral") == [0, 1]
    assert desk.post([(1, 0, 2, 0), (4, 5, 2, 1), (3, 2, 2, 2)], "dral") == [0, 2, 1]
    t = desk.take("ann")
    assert (t.id, t.round, t.step) == (0, 2, 0)  # a waiting question belongs to the round now asking it
    assert desk.answer(t.id, "ann", 1)
    assert desk.post([(0, 1, 3, 0)], "dral") == [0]  # answered: still the same question, not queued again
    assert desk.wait([0], 1.0) == {0: 1}
    assert desk.status() | {"annotators": None} == {"pending": 2, "leased": 0, "answered": 1, "skipped": 0,
                                                    "questions": 3, "closed_through": None, "annotators": None}
    with pytest.raises(ValueError, match="same image"):
        desk.post([(3, 3, 1, 0)], "dral")


def test_several_annotators_never_get_the_same_question():
    desk = QuestionDesk(clock=Clock())  # the clock stands still: no lease runs out, so nothing is handed twice
    ids = desk.post([(q, c, 1, 0) for q in range(20) for c in range(q + 1, q + 11)], "dral")
    assert len(ids) == 200 == len(set(ids))
    handed: dict[str, list[int]] = {f"ann{i}": [] for i in range(6)}
    start = threading.Barrier(len(handed))

    def annotate(name):
        def run():
            start.wait(JOIN_S)
            while (t := desk.take(name)) is not None:
                assert desk.take(name).id == t.id  # taking again is the same ticket
                handed[name].append(t.id)
                assert desk.answer(t.id, name, 1 if (t.query + t.candidate) % 3 else -1)
        return run

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside the desk's calls, not one after the other
    try:
        run_threads([annotate(n) for n in handed])
    finally:
        sys.setswitchinterval(switch)
    got = [i for ids_ in handed.values() for i in ids_]
    assert sorted(got) == sorted(ids)  # every question handed out exactly once
    s = desk.status()
    assert (s["pending"], s["leased"], s["answered"]) == (0, 0, 200)
    assert s["annotators"] == {n: len(v) for n, v in handed.items() if v}
    assert len(desk.wait(ids, 1.0)) == 200


def test_an_answer_arriving_twice_counts_once():
    desk = QuestionDesk(clock=Clock())
    (qid,) = desk.post([(0, 1, 1, 0)], "dral")
    assert desk.take("ann").id == qid
    start = threading.Barrier(8)
    won: list[bool] = []

    def send():
        start.wait(JOIN_S)
        won.append(desk.answer(qid, "ann", 1))  # a page resending its click, eight times at once

    run_threads([send] * 8)
    assert sorted(won) == [False] * 7 + [True]
    assert desk.answer(qid, "ann", -1) is False  # the first answer stands
    assert desk.wait([qid], 1.0) == {qid: 1}
    assert desk.status()["annotators"] == {"ann": 1} and desk.status()["answered"] == 1
    with pytest.raises(UnknownQuestion, match="no question 99") as err:
        desk.answer(99, "ann", 1)
    assert isinstance(err.value, KeyError)
    (other,) = desk.post([(2, 3, 1, 0)], "dral")
    with pytest.raises(NotOffered, match="never handed to annotator 'bob'"):
        desk.answer(other, "bob", 1)
    for bad in (0, 2, True, "yes"):
        with pytest.raises(ValueError, match="must be \\+1"):
            desk.answer(other, "ann", bad)


def test_a_lease_that_runs_out_requeues_and_the_first_answer_wins():
    clock = Clock()
    desk = QuestionDesk(lease_s=60, clock=clock)
    a_id, b_id = desk.post([(0, 1, 1, 0), (2, 3, 1, 0)], "dral")
    first = desk.take("ann")
    assert (first.id, first.annotator, first.leased_until) == (a_id, "ann", 1060.0)
    clock.t += 30
    assert desk.take("ann").leased_until == 1090.0  # a reconnecting page: same question, lease renewed
    assert desk.take("bob").id == b_id  # each question with one person at a time
    assert desk.take("cat") is None
    assert desk.status()["leased"] == 2 and desk.status()["pending"] == 0
    clock.t += 61  # both leases ran out
    assert desk.status()["leased"] == 0 and desk.status()["pending"] == 2
    assert desk.take("cat").id == a_id  # back at its place in the queue: the oldest first
    assert desk.take("dan").id == b_id
    assert desk.answer(a_id, "ann", -1)  # ann's late answer still counts: the first valid answer wins
    assert desk.answer(a_id, "cat", 1) is False
    assert desk.take("cat") is None  # cat's ticket was answered; nothing else waits
    assert desk.wait([a_id], 1.0) == {a_id: -1}
    assert desk.take("ann", lease_s=5) is None
    with pytest.raises(ValueError, match="lease_s"):
        desk.take("ann", lease_s=0)


def test_a_skipped_question_goes_to_the_back_and_to_someone_else():
    desk = QuestionDesk(clock=Clock())
    q0, q1, q2 = desk.post([(0, 1, 1, 0), (2, 3, 1, 0), (4, 5, 1, 0)], "dral")
    assert desk.take("ann").id == q0
    assert desk.answer(q0, "ann", None)
    assert desk.answer(q0, "ann", None) is False  # skipping twice changes nothing
    assert desk.take("bob").id == q1  # q0 went behind q1 and q2
    assert desk.take("ann").id == q2  # never q0 again for ann
    assert desk.status()["skipped"] == 1
    assert desk.answer(q2, "ann", 1) and desk.take("ann") is None
    assert desk.answer(q1, "bob", -1)
    assert desk.take("bob").id == q0  # someone who did not skip it
    assert desk.answer(q0, "bob", None) and desk.take("bob") is None and desk.take("ann") is None
    assert desk.status()["skipped"] == 1 and desk.status()["pending"] == 1  # skipped by everyone so far
    assert desk.take("cat").id == q0 and desk.answer(q0, "cat", 1)
    assert desk.status()["skipped"] == 0 and desk.answer(q0, "bob", None) is False


def test_undo_is_last_in_first_out_and_ends_when_the_round_closes():
    desk = QuestionDesk(clock=Clock())
    q0, q1, q2, q3 = desk.post([(0, 1, 1, 0), (2, 3, 1, 1), (4, 5, 1, 2), (6, 7, 1, 3)], "dral")
    assert desk.answer(desk.take("ann").id, "ann", 1) and desk.answer(desk.take("ann").id, "ann", -1)
    assert desk.take("ann").id == q2  # ann holds q2 when she presses U
    assert desk.undo("ann") == Undone(q1, 2, 3, 1, 1, "dral", -1, "ann")
    assert desk.take("bob").id == q2  # q2 went back to its place; q1 is reserved for ann (leased to her)
    assert desk.take("ann").id == q1  # the undone question is the next thing ann sees
    assert desk.undo("ann").id == q0  # U twice undoes two; ann now holds q0, q1 goes back to the front
    assert desk.status()["answered"] == 0 and desk.status()["annotators"] == {"ann": 0}
    assert desk.take("cat").id == q1
    assert desk.take("ann").id == q0 and desk.answer(q0, "ann", -1)
    assert desk.wait([q0], 1.0) == {q0: -1}
    assert desk.undo("bob") is None  # nothing answered: nothing to undo
    desk.close_round(1)  # the CNN fine-tunes on round 1
    assert desk.undo("ann") is None and desk.status()["closed_through"] == 1
    (q4,) = desk.post([(8, 9, 2, 0)], "dral")
    assert desk.take("dan").id == q3 and desk.answer(q3, "dan", 1)
    assert desk.undo("dan") is None  # round 1's answers are closed to undo, whenever they were given
    assert desk.take("ann").id == q4 and desk.answer(q4, "ann", 1)
    assert desk.undo("ann").id == q4  # round 2 is still open
    assert desk.undo("ann") is None  # the next on ann's stack is round 1's: closed


def test_wait_blocks_until_another_thread_answers_and_times_out_naming_the_open():
    desk = QuestionDesk(clock=Clock())
    ids = desk.post([(0, 1, 1, 0), (2, 3, 1, 0)], "dral")
    with pytest.raises(TimeoutError, match="2 of 2 questions still unanswered"):
        desk.wait(ids, 0.01)
    got: list = []
    run_threads([lambda: got.append(desk.wait(ids, JOIN_S)),
                 lambda: [desk.answer(desk.take("ann").id, "ann", y) for y in (1, -1)]])
    assert got == [{ids[0]: 1, ids[1]: -1}]
    with pytest.raises(UnknownQuestion):
        desk.wait([7], 0.01)


def test_every_change_reaches_on_change_after_the_lock_is_released():
    events = []
    desk = QuestionDesk(clock=Clock())

    def listen(e):
        desk.status()  # calling back into the desk must not deadlock
        events.append((e.kind, e.question_id, e.annotator, e.answer))
        if e.kind == "answered":
            raise RuntimeError("a broken page")  # logged; the answer still counted

    desk.on_change = listen
    (q0,) = desk.post([(0, 1, 1, 0)], "dral")
    assert desk.take("ann").id == q0 and desk.answer(q0, "ann", None)
    assert desk.take("bob").id == q0 and desk.answer(q0, "bob", 1)
    assert desk.answer(q0, "bob", 1) is False  # no change, no event
    desk.undo("bob")
    desk.close_round(1)
    assert events == [("posted", q0, None, None), ("leased", q0, "ann", None), ("skipped", q0, "ann", None),
                      ("leased", q0, "bob", None), ("answered", q0, "bob", 1), ("undone", q0, "bob", 1),
                      ("round_closed", None, None, None)]


# ---------------------------------------------------------------- the human oracle
class Annotator:
    """A person at the page, in a thread: answers every question the desk posts (truthfully unless ``answers``
    says otherwise), noting whether the asker had already returned when each answer was given."""

    def __init__(self, desk: QuestionDesk, name: str = "ann", answers=None, on_answer=None) -> None:
        self.desk, self.name, self.answers, self.on_answer = desk, name, answers or {}, on_answer
        self.posted: queue.Queue = queue.Queue()
        desk.on_change = lambda e: self.posted.put(e) if e.kind == "posted" else None
        self.asker_returned = threading.Event()
        self.answered_while_asker_waited: list[bool] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.error: BaseException | None = None

    def run(self):
        try:
            self.annotate()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread by __exit__
            self.error = e

    def annotate(self):
        while (e := self.posted.get(timeout=JOIN_S)) is not None:
            t = self.desk.take(self.name)
            assert t.id == e.question_id
            y = self.answers.get((t.query, t.candidate), truth(t.query, t.candidate))
            self.answered_while_asker_waited.append(not self.asker_returned.is_set())
            assert self.desk.answer(t.id, self.name, y)
            if self.on_answer is not None:
                self.on_answer(t)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.posted.put(None)
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def _posted(question_id):
    """The event an Annotator thread reacts to, for a question that was queued before it started."""
    return DeskEvent(0, "posted", question_id)


def ask(oracle: HumanOracle, annotator: Annotator, questions, strategy="dral"):
    out = oracle.ask_batch(questions, strategy)
    annotator.asker_returned.set()
    return out


def test_ask_batch_blocks_until_people_answer_and_logs_who_and_when(tmp_path):
    desk = QuestionDesk(clock=Clock())
    oracle = HumanOracle(len(PIDS), desk, OracleConfig(), AnswerLog(tmp_path, flush_every=100),
                         paths=[f"img{i}.jpg" for i in range(len(PIDS))], timeout_s=JOIN_S)
    before = datetime.now(timezone.utc)
    with Annotator(desk, answers={(0, 2): 1}) as ann:  # ann errs on (0, 2): the log keeps what she said
        got = ask(oracle, ann, [(0, 1, 1, 0), (0, 2, 1, 1), (1, 0, 1, 2), (3, 2, 1, 3)])
    assert got == [1, 1, 1, 1]  # (1, 0) repeats (0, 1) in the same batch: free
    assert ann.answered_while_asker_waited == [True, True, True]
    assert oracle.used == 3 and oracle.known(2, 0) == 1 and oracle.known(0, 3) is None
    records = AnswerLog(tmp_path).records()  # flushed before ask_batch returned, despite flush_every=100
    assert [(r.query, r.candidate, r.answer, r.round, r.step) for r in records] == \
        [(0, 1, 1, 1, 0), (0, 2, 1, 1, 1), (3, 2, 1, 1, 3)]
    assert {r.annotator for r in records} == {"ann"} and {r.retracts for r in records} == {None}
    assert all(before <= r.time <= datetime.now(timezone.utc) for r in records)
    assert records[2].query_path == "img3.jpg" and records[2].candidate_path == "img2.jpg"
    assert oracle.known_batch([(0, [1, 2, 3])]) == [[1, 1, None]]
    with pytest.raises(AlreadyAsked):
        oracle.ask(1, 0, round=1, step=0, strategy="dral")
    with pytest.raises(IndexError, match="candidate index 10"):
        oracle.ask_batch([(0, 10, 1, 0)], "dral")


def test_budget_and_free_pairs_follow_ask_each_exactly():
    batches = [[(0, 1, 1, 0), (2, 3, 1, 0)],  # 2 paid
               [(1, 0, 1, 1), (4, 5, 1, 1), (5, 4, 1, 1), (6, 7, 1, 1), (8, 9, 1, 1), (2, 3, 1, 1)],  # 2 paid, cut
               [(3, 2, 2, 0), (8, 9, 2, 0)]]
    expected = [[1, 1], [1, 1, 1, -1, None, None], [1, None]]
    cfg = OracleConfig(budget=4)
    simulated = SimulatedOracle(PIDS, cfg)
    desk = QuestionDesk(clock=Clock())
    human = HumanOracle(len(PIDS), desk, cfg, timeout_s=JOIN_S)
    with Annotator(desk) as ann:
        for batch, want in zip(batches, expected):
            assert human.ask_batch(batch, "dral") == simulated.ask_batch(batch, "dral") == want
            assert (human.used, human.remaining) == (simulated.used, simulated.remaining)
    assert human.used == 4 and human.remaining == 0
    with pytest.raises(BudgetExhausted):
        human.ask(8, 9, round=2, step=0, strategy="dral")
    assert len(desk) == 4 and len(ann.answered_while_asker_waited) == 4  # nothing unpaid was ever posted


def test_timeout_logs_nothing_and_asking_again_gets_the_same_question(tmp_path):
    desk = QuestionDesk(clock=Clock())
    oracle = HumanOracle(len(PIDS), desk, OracleConfig(), AnswerLog(tmp_path), timeout_s=0.01)
    with pytest.raises(TimeoutError, match="1 of 1"):
        oracle.ask_batch([(0, 1, 1, 0)], "dral")
    assert oracle.used == 0 and len(AnswerLog(tmp_path)) == 0
    t = desk.take("ann")
    assert desk.answer(t.id, "ann", -1)  # answered while nobody waits
    assert oracle.ask_batch([(1, 0, 1, 0)], "dral") == [-1]  # re-posted: the same desk question, answered
    assert len(desk) == 1 and [r.annotator for r in AnswerLog(tmp_path).records()] == ["ann"]


def test_undo_after_the_loop_got_the_answer_is_a_retraction(tmp_path):
    desk = QuestionDesk(clock=Clock())
    oracle = HumanOracle(len(PIDS), desk, OracleConfig(budget=5), AnswerLog(tmp_path), timeout_s=JOIN_S)
    with Annotator(desk) as ann:
        assert ask(oracle, ann, [(0, 1, 1, 0), (2, 4, 1, 1)]) == [1, -1]
    mark = oracle.retractions
    assert mark == 0 and oracle.used == 2
    undone = oracle.undo("ann")
    assert (undone.id, undone.query, undone.candidate, undone.answer) == (1, 2, 4, -1)
    assert oracle.known(2, 4) is None and oracle.used == 1 and oracle.remaining == 4  # not paid for any more
    (r,) = oracle.retracted_since(mark)
    assert (r.query, r.candidate, r.round, r.answer, r.annotator, r.question_id, r.record_id) == \
        (2, 4, 1, -1, "ann", 1, 2)
    rows = AnswerLog(tmp_path).records()
    assert (rows[2].answer, rows[2].retracts, rows[2].annotator, rows[2].round) == (0, 1, "ann", 1)
    oracle.close_round(1)  # the loop closes the round before checking retracted_since, then fine-tunes
    assert oracle.undo("ann") is None and oracle.retractions == 1
    # the round is replayed: the pair is asked again; ann, who holds it, now says "same"
    with Annotator(desk, answers={(2, 4): 1}) as ann:
        ann.posted.put(_posted(undone.id))  # queued since the undo: posting it again announces nothing
        assert ask(oracle, ann, [(4, 2, 1, 1)]) == [1]
    table = AnswerLog(tmp_path).read()
    assert table.column("question_id").to_pylist() == [0, 1, 2, 3]
    assert effective(table).column("question_id").to_pylist() == [0, 3]
    assert effective(table).column("answer").to_pylist() == [1, 1]
    assert oracle.used == 2 and oracle.retracted_since(mark) == [r]


def test_undo_before_the_loop_got_the_answer_only_reopens_the_question(tmp_path):
    desk = QuestionDesk(clock=Clock())
    oracle = HumanOracle(len(PIDS), desk, OracleConfig(), AnswerLog(tmp_path), timeout_s=JOIN_S)
    undos: list = []

    def second_thoughts(t):
        if t.id == 0 and not undos:  # ann clicked "same" on the first, then pressed U at once
            undos.append(oracle.undo("ann"))
            again = desk.take("ann")
            assert again.id == 0 and desk.answer(0, "ann", -1)

    with Annotator(desk, answers={(0, 2): 1}, on_answer=second_thoughts) as ann:
        assert ask(oracle, ann, [(0, 2, 1, 0), (0, 1, 1, 1)]) == [-1, 1]
    assert undos[0].answer == 1 and oracle.retractions == 0
    assert [(r.query, r.candidate, r.answer, r.retracts) for r in AnswerLog(tmp_path).records()] == \
        [(0, 2, -1, None), (0, 1, 1, None)]  # the undone answer never reached the log


def test_resume_from_a_log_with_a_retraction(tmp_path):
    desk = QuestionDesk(clock=Clock())
    first = HumanOracle(len(PIDS), desk, OracleConfig(budget=4), AnswerLog(tmp_path), timeout_s=JOIN_S)
    with Annotator(desk, answers={(2, 3): -1}) as ann:  # answers need not match any ground truth
        assert ask(first, ann, [(0, 1, 1, 0), (2, 3, 1, 1), (4, 5, 1, 2)]) == [1, -1, 1]
    assert first.undo("ann").query == 4
    resumed = HumanOracle(len(PIDS), QuestionDesk(clock=Clock()), OracleConfig(budget=4), AnswerLog(tmp_path))
    assert resumed.used == 2 and resumed.remaining == 2
    assert resumed.known(3, 2) == -1 and resumed.known(1, 0) == 1 and resumed.known(4, 5) is None
    assert resumed.retractions == 0  # counted per process: the loop replays an interrupted round anyway
    # the simulated oracle reads the same log for its answers in force (and checks them against the truth)
    with pytest.raises(ValueError, match="question_id 1"):
        SimulatedOracle(PIDS, OracleConfig(budget=4), AnswerLog(tmp_path))


def test_resume_from_a_log_written_before_annotator_and_retracts(tmp_path):
    old = pa.Table.from_pylist([
        {"question_id": i, "query": q, "candidate": c, "query_path": None, "candidate_path": None, "answer": y,
         "step": i, "round": 1, "strategy": "dral", "time": datetime(2025, 1, 1, tzinfo=timezone.utc)}
        for i, (q, c, y) in enumerate([(0, 1, 1), (2, 4, -1)])], schema=SCHEMA_V1)
    pq.write_table(old, tmp_path / "part-00000000.parquet")
    log = AnswerLog(tmp_path)
    table = log.read()
    assert table.schema.equals(SCHEMA) and table.column("annotator").null_count == 2
    oracle = HumanOracle(len(PIDS), QuestionDesk(clock=Clock()), OracleConfig(budget=3), log)
    assert oracle.used == 2 and oracle.known(4, 2) == -1


def test_oracle_config_mode_and_lease():
    cfg = load_config(OracleConfig, None, ["mode=human", "lease_s=30"])
    assert (cfg.mode, cfg.lease_s) == ("human", 30.0)
    assert (OracleConfig().mode, OracleConfig().lease_s) == ("simulated", 120.0)
    with pytest.raises(ConfigError, match="mode"):
        load_config(OracleConfig, None, ["mode=robot"])
    job = load_config(LoopJob, None, ["oracle.mode=human", "annotator.port=0"])
    assert (job.oracle.mode, job.annotator.host, job.annotator.port) == ("human", "127.0.0.1", 0)
    with pytest.raises(ConfigError, match="annotator.port"):
        load_config(LoopJob, None, ["annotator.port=70000"])
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="lease_s"):
            OracleConfig(lease_s=bad)


def test_the_annotation_core_does_not_import_ray():
    import subprocess
    code = ("import sys, reidloop.annotation, reidloop.answer_log; "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---------------------------------------------------------------- the journal: answers durable when given
def test_an_answer_given_while_its_batch_waits_survives_a_restart_and_is_not_asked_again(tmp_path):
    """People answer in their own order, the log takes a batch in the loop's order: the journal keeps what
    was given in between, so a restart (a new desk and oracle over the same files) asks only what is left."""
    from reidloop.annotation import Board
    from reidloop.annotation.journal import DeskJournal

    def start(timeout_s=JOIN_S):
        desk = QuestionDesk(clock=Clock())
        oracle = HumanOracle(len(PIDS), desk, OracleConfig(), AnswerLog(tmp_path / "answers"),
                             journal=DeskJournal(tmp_path / "desk-journal.jsonl"), timeout_s=timeout_s)
        return desk, oracle, Board(desk, oracle, [f"img{i}.jpg" for i in range(len(PIDS))])

    batch = [(0, 1, 1, 0), (2, 3, 1, 0), (4, 5, 1, 0)]
    desk, oracle, board = start(timeout_s=1.0)  # (when its wait ends does not matter: the journal is the point)
    ended = []

    def abandoned_asker(oracle=oracle):  # the loop waits for all three; its process "dies" before they come
        try:
            oracle.ask_batch(batch, "dral")
        except TimeoutError as e:  # (its timeout_s ends the wait; nothing was logged by it)
            ended.append(e)

    asked = threading.Thread(target=abandoned_asker, daemon=True)
    asked.start()
    wait_for(lambda: desk.status()["questions"] == 3, "the batch on the desk")
    first, second = board.next("ann"), board.next("bob")
    assert board.answer("ann", first["id"], -1) and board.answer("bob", second["id"], 1)  # "counted"
    assert board.undo("bob")["id"] == second["id"]  # ... and bob took his back
    assert len(AnswerLog(tmp_path / "answers")) == 0  # the batch is not complete: nothing in the log yet

    desk, oracle, board = start()  # the restart: the old desk and its waiting thread are gone
    with Annotator(desk, name="cat") as cat:
        got = ask(oracle, cat, batch)
    assert got == [-1, truth(2, 3), truth(4, 5)]  # ann's answer kept (even where she erred), bob's undone
    assert cat.answered_while_asker_waited == [True, True]  # only the two left were asked again
    records = AnswerLog(tmp_path / "answers").records()
    assert [(r.query, r.candidate, r.answer, r.annotator) for r in records] == \
        [(0, 1, -1, "ann"), (2, 3, truth(2, 3), "cat"), (4, 5, truth(4, 5), "cat")]  # the loop's order
    journal = (tmp_path / "desk-journal.jsonl").read_text()  # compacted at the restart: bob's undo is gone
    assert journal.count("\n") == 1 and '"annotator": "ann"' in journal  # (cat answered on the desk itself)
    start()
    assert (tmp_path / "desk-journal.jsonl").read_text() == ""  # the log holds everything: the journal empties
    asked.join(JOIN_S + 5)
    assert not asked.is_alive() and len(ended) == 1  # the abandoned asker timed out, and logged nothing
    assert len(AnswerLog(tmp_path / "answers")) == 3


def test_a_torn_last_journal_line_is_ignored_and_any_other_bad_line_named(tmp_path):
    from reidloop.annotation.journal import DeskJournal

    j = DeskJournal(tmp_path / "j.jsonl")
    j.answer((0, 1), 1, "ann", datetime.now(timezone.utc))
    with open(j.path, "a") as f:
        f.write('{"pair": [2, 3], "ans')  # a crash mid-write: this answer was never acknowledged
    assert list(j.pending()) == [(0, 1)]
    j.path.write_text('{"pair": [2, 3]}\n' + j.path.read_text())
    with pytest.raises(ValueError, match=r"j.jsonl: line 1 is not a journal entry"):
        j.pending()
