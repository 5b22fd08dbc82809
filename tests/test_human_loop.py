"""oracle.mode: human through the whole loop: people (here annotator threads working the real question desk)
answer, the loop asks, logs, fine-tunes and replays a round when someone undoes an answer."""
from __future__ import annotations

import numpy as np
import pytest

from annotators import Annotator
from conftest import answered, tiny_job
from reidloop.active.loop import ActiveLearningLoop
from reidloop.answer_log import AnswerLog, effective
from reidloop.data.registry import build_splits


def run_human(job, pids, script=None):
    annotators = []

    def on_board(board):
        a = Annotator(board, lambda i: pids[i], script=script)
        annotators.append(a)
        a.start()

    loop = ActiveLearningLoop(job, progress=False, on_board=on_board)
    try:
        return loop.run(), loop, annotators[0]
    finally:
        for a in annotators:
            a.stop()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("sim")
    job = tiny_job(root / "sim", tiny_checkpoint, root / "cache", strategy="nearest", **{"finetune.every": 1.0, "oracle.budget": 60})
    result = ActiveLearningLoop(job, progress=False).run()
    pids = np.array([r.pid for r in build_splits(job.data, cache_dir=job.data.root).train])
    return result, root, pids


def test_people_answering_truthfully_get_the_simulated_runs_questions_and_model(tmp_path, tiny_checkpoint,
                                                                                 simulated):
    sim, root, pids = simulated
    job = tiny_job(tmp_path / "human", tiny_checkpoint, root / "cache", strategy="nearest",
                   **{"finetune.every": 1.0, "oracle.budget": 60, "oracle.mode": "human"})
    result, loop, alice = run_human(job, pids)
    assert answered(tmp_path / "human") == answered(root / "sim")  # the same questions, in the same order
    assert result.answers == sim.answers == alice.answers > 0
    assert [r["mAP"] for r in result.rounds] == pytest.approx([r["mAP"] for r in sim.rounds])
    log = AnswerLog(tmp_path / "human" / "answers").read()
    assert set(log.column("annotator").to_pylist()) == {"alice"}  # who answered, logged
    status = loop.board.status()
    assert (status["phase"], status["answers"], status["queries_done"]) == ("done", sim.answers, 12)
    assert [r["round"] for r in status["rounds"]] == [0, 1] and status["curve"]  # metrics and curve for the page


def test_an_undo_replays_the_round_and_the_log_keeps_only_the_answer_in_force(tmp_path, tiny_checkpoint,
                                                                              simulated):
    """Alice gets the round's first question wrong, notices at the next one, undoes and answers it again."""
    sim, root, pids = simulated
    first = {}

    def script(question, alice):
        q, c, truth = question["query"], question["candidate"], alice.truth(question["query"], question["candidate"])
        if not first:
            first.update(pair=(q, c), id=question["id"])
            return -truth  # the mistake
        if "undone" not in first:
            undone = alice.board.undo(alice.name)  # the loop had already learnt from it
            first["undone"] = undone
            assert undone is not None and (undone["query"], undone["candidate"]) == first["pair"]
            again = alice.board.next(alice.name)  # the undone question comes back first, to her
            assert again["id"] == first["id"]
            assert alice.board.answer(alice.name, again["id"], alice.truth(*first["pair"]))
            alice.answers += 1
        return truth

    job = tiny_job(tmp_path / "human", tiny_checkpoint, root / "cache", strategy="nearest",
                   **{"finetune.every": 1.0, "oracle.budget": 60, "oracle.mode": "human"})
    result, loop, alice = run_human(job, pids, script)
    assert result.undo_replays == 1
    table = AnswerLog(tmp_path / "human" / "answers").read()
    assert table.column("retracts").drop_null().to_pylist() != []  # the retraction is on record
    live = effective(table)
    pairs = list(zip(live.column("query").to_pylist(), live.column("candidate").to_pylist()))
    assert len(pairs) == len({tuple(sorted(p)) for p in pairs})  # no pair twice in force
    truth = {p: (1 if pids[p[0]] == pids[p[1]] else -1) for p in pairs}
    assert live.column("answer").to_pylist() == [truth[p] for p in pairs]  # the mistake is not in force
    assert first["pair"] in pairs
    # the replayed agent asked what the simulated run asks; what the mistake made it ask stays paid for
    assert set(zip(*answered(root / "sim")[:2])) <= set(pairs)
    assert result.answers == len(pairs) > sim.answers  # (60 answers leave room for the detour)
