"""The active-learning loop (Algorithm 1) end to end on tiny synthetic data, in one process."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from reidloop.active.finetune import components, pair_batches
from reidloop.active.loop import ActiveLearningLoop, round_slices
from reidloop.answer_log import AnswerLog
from reidloop.config import ConfigError
from conftest import BY_ANSWERS, Crash, answered, crashing_loop, implied_when_asked, tiny_job


def test_round_slices_cover_every_query_once():
    sl = round_slices(10, 0.25)
    assert len(sl) == 4
    assert sorted(i for s in sl for i in range(10)[s]) == list(range(10))
    assert len(round_slices(7, 1.0)) == 1


def test_components_and_pair_batches_use_every_answer():
    labels = components(6, np.array([[0, 1], [1, 2], [4, 5]]))
    assert labels[0] == labels[1] == labels[2] != labels[4] == labels[5] and labels[3] == -1
    q = np.array([0, 0, 0, 3, 3, 5]); c = np.array([1, 2, 4, 4, 1, 2]); y = np.array([1, -1, -1, 1, -1, 1])
    seen = set()
    for items, pos, neg in pair_batches(q, c, y, per_batch=1, rng=np.random.default_rng(0)):
        for (a, b), ans in [(p, 1) for p in pos] + [(p, -1) for p in neg]:
            seen.add((int(items[a]), int(items[b]), ans))
    expected = {(min(a, b), max(a, b), int(v)) for a, b, v in zip(q, c, y)}
    assert {(min(a, b), max(a, b), v) for a, b, v in seen} == expected


@pytest.mark.parametrize("strategy", ["dral", "random", "qiu", "qbc", "gd", "nearest", "farthest"])
def test_loop_runs_and_logs_each_answer_once(tmp_path, tiny_checkpoint, strategy):
    job = tiny_job(tmp_path / strategy, tiny_checkpoint, tmp_path / "cache", strategy=strategy)
    result = ActiveLearningLoop(job, progress=False).run()
    out = tmp_path / strategy
    q, c, y = answered(out)
    pairs = [(min(a, b), max(a, b)) for a, b in zip(q, c)]
    assert len(pairs) == len(set(pairs)) == result.answers > 0  # no pair asked twice
    assert result.answers <= 12 * 3  # n_queries · Kmax (paper §4.4)
    per_query = np.bincount(q)
    assert per_query.max() <= 3
    assert all(v in (1, -1) for v in y)
    rows = pq.read_table(out / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["answers"] == 0 and rows[-1]["answers"] == result.answers
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == result.answers and summary["strategy"] == strategy
    for name in ("curve.png", "model.pt", "strategy.pt", "config.yaml", "state.json"):
        assert (out / name).stat().st_size > 0


def test_budget_is_a_hard_stop(tmp_path, tiny_checkpoint):
    job = tiny_job(tmp_path / "b", tiny_checkpoint, tmp_path / "cache", strategy="random", **{"oracle.budget": 7})
    result = ActiveLearningLoop(job, progress=False).run()
    assert result.answers == 7 and len(answered(tmp_path / "b")[0]) == 7


@pytest.mark.slow
def test_references_ask_nothing(tmp_path, tiny_checkpoint):
    base = ActiveLearningLoop(tiny_job(tmp_path / "base", tiny_checkpoint, tmp_path / "cache",
                                       strategy="baseline"), progress=False).run()
    assert base.answers == 0
    assert base.rounds[0]["mAP"] == base.rounds[-1]["mAP"]  # no fine-tuning: the model is unchanged
    upper = ActiveLearningLoop(tiny_job(tmp_path / "up", tiny_checkpoint, tmp_path / "cache",
                                        strategy="upperbound"), progress=False).run()
    assert upper.answers == 0 and upper.rounds[-1]["mAP"] != upper.rounds[0]["mAP"]


def test_pretraining_is_reproducible(tmp_path):
    """Same config and seeds, two output folders: bit-identical pre-trained CNNs (the head's init is seeded)."""
    import torch

    from reidloop.models import load_checkpoint

    weights = []
    for name in ("a", "b"):
        job = tiny_job(tmp_path / name, "", tmp_path / "cache", strategy="baseline", max_queries=4,
                       **{"pretrain.epochs": 1, "pretrain.ids_per_batch": 2, "pretrain.images_per_id": 2})
        ActiveLearningLoop(job, progress=False).run()
        weights.append(load_checkpoint(tmp_path / name / "pretrained.pt")[0].state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint):
    """The reference: the same job run without interruption."""
    root = tmp_path_factory.mktemp("full")
    result = ActiveLearningLoop(tiny_job(root / "full", tiny_checkpoint, root / "cache"), progress=False).run()
    return result, root


@pytest.mark.parametrize("crash_after", [5, 23])  # inside round 1; inside round 2 (round 1 checkpointed)
def test_resume_after_a_crash_asks_the_same_pairs(tmp_path, tiny_checkpoint, uninterrupted, crash_after):
    full, root = uninterrupted
    cache = root / "cache"
    job = tiny_job(tmp_path / "crash", tiny_checkpoint, cache)
    with pytest.raises(Crash):
        crashing_loop(job, after=crash_after).run()
    assert len(answered(tmp_path / "crash")[0]) == crash_after  # nothing collected was lost
    resumed = ActiveLearningLoop(job, progress=False).run()
    assert resumed.replayed_answers > 0
    a, b = answered(root / "full"), answered(tmp_path / "crash")
    assert sorted(zip(*a)) == sorted(zip(*b))  # same pairs, same answers, none twice
    assert resumed.answers == full.answers


def test_a_run_from_a_source_model_with_a_classifier_resumes_after_a_round(tmp_path):
    """A supervised source model keeps its classifier (e.g. CUHK03's 767 identities); the round checkpoints
    have none (the fine-tune drops it), and resuming loads one into the other."""
    from conftest import write_checkpoint

    source = tmp_path / "source.pt"
    write_checkpoint(source, seed=0, num_classes=5)
    full = ActiveLearningLoop(tiny_job(tmp_path / "full", source, tmp_path / "cache"), progress=False).run()
    job = tiny_job(tmp_path / "crash", source, tmp_path / "cache")
    with pytest.raises(Crash):
        crashing_loop(job, after=23).run()  # inside round 2: round 1 is checkpointed
    resumed = ActiveLearningLoop(job, progress=False).run()
    assert sorted(zip(*answered(tmp_path / "full"))) == sorted(zip(*answered(tmp_path / "crash")))
    assert [r["mAP"] for r in resumed.rounds] == pytest.approx([r["mAP"] for r in full.rounds])


def test_resume_with_a_changed_config_is_refused(tmp_path, tiny_checkpoint):
    cache = tmp_path / "cache"
    job = tiny_job(tmp_path / "r", tiny_checkpoint, cache)
    with pytest.raises(Crash):
        crashing_loop(job, after=4).run()
    changed = tiny_job(tmp_path / "r", tiny_checkpoint, cache, strategy="qiu")
    with pytest.raises(ConfigError, match=r"cannot resume with a changed config \(strategy: 'dral' -> 'qiu'\)"):
        ActiveLearningLoop(changed, progress=False).run()
    # a change that would not alter the replayed questions is refused too: one run folder, one experiment
    with pytest.raises(ConfigError, match=r"\(finetune.lr: 0.0001 -> 0.001\)"):
        ActiveLearningLoop(tiny_job(tmp_path / "r", tiny_checkpoint, cache, **{"finetune.lr": 1e-3}), progress=False).run()
    assert len(answered(tmp_path / "r")[0]) == 4  # the log is untouched
    ActiveLearningLoop(job, progress=False).run()  # and the same config resumes


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dral", "random"])
def test_no_question_is_implied_by_earlier_answers(tmp_path, tiny_checkpoint, strategy):
    over = {"strategy": strategy, "max_queries": 24, "dral.kmax": 5}
    on = ActiveLearningLoop(tiny_job(tmp_path / "on", tiny_checkpoint, tmp_path / "cache", **over),
                            progress=False).run()
    assert on.answers > 0 and implied_when_asked(tmp_path / "on") == 0
    off = ActiveLearningLoop(tiny_job(tmp_path / "off", tiny_checkpoint, tmp_path / "cache",
                                      infer_answers=False, **over), progress=False).run()
    assert implied_when_asked(tmp_path / "off") > 0  # without inference the same loop asks what it knew
    assert on.answers <= off.answers  # Kmax per query still bounds the cost (paper §4.4)


# ------------------------------------------------------------------ rounds cut by answers
def round_of_each_answer(out) -> list[int]:
    return AnswerLog(out / "answers").read().column("round").to_pylist()


def test_rounds_by_answers_fine_tune_after_the_same_answers_for_every_strategy(tmp_path, tiny_checkpoint):
    """Two strategies that spend answers differently per query fine-tune after the same answer counts."""
    curves, browsed = {}, {}
    for strategy in ("nearest", "random"):
        out = tmp_path / strategy
        result = ActiveLearningLoop(tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy=strategy,
                                             **BY_ANSWERS), progress=False).run()
        curves[strategy] = [r["answers"] for r in result.rounds]
        assert round_of_each_answer(out) == [1] * 5 + [2] * 5  # the fine-tune came after answer 5, then 10
        browsed[strategy] = json.loads((out / "state.json").read_text())["next_query"]
    assert curves["nearest"] == curves["random"] == [0, 5, 10]
    assert all(0 < b <= 12 for b in browsed.values())


def test_rounds_by_answers_stop_when_every_query_is_browsed(tmp_path, tiny_checkpoint):
    """A budget no strategy can spend (more than n * Kmax): the run ends after the query order, and says so."""
    out = tmp_path / "big"
    job = tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy="random", max_queries=4,
                   **{**BY_ANSWERS, "oracle.budget": 1000})
    result = ActiveLearningLoop(job, progress=False).run()
    assert result.answers <= 4 * 3 and len(result.rounds) == 2  # round 0 and the one round that asked
    assert json.loads((out / "summary.json").read_text())["budget"] == 1000


@pytest.mark.parametrize("crash_after", [3, 7])  # inside round 1; inside round 2
def test_rounds_by_answers_resume_asks_the_same_questions_in_order(tmp_path, tiny_checkpoint, crash_after):
    cache = tmp_path / "cache"
    full = ActiveLearningLoop(tiny_job(tmp_path / "full", tiny_checkpoint, cache, **BY_ANSWERS), progress=False).run()
    job = tiny_job(tmp_path / "crash", tiny_checkpoint, cache, **BY_ANSWERS)
    with pytest.raises(Crash):
        crashing_loop(job, after=crash_after).run()
    resumed = ActiveLearningLoop(job, progress=False).run()
    assert answered(tmp_path / "full") == answered(tmp_path / "crash")  # same pairs, same order
    assert round_of_each_answer(tmp_path / "full") == round_of_each_answer(tmp_path / "crash")
    assert [r["answers"] for r in resumed.rounds] == [r["answers"] for r in full.rounds] == [0, 5, 10]


def test_learners_upperbound_trains_on_truth_without_asking(tmp_path, tiny_checkpoint):
    job = tiny_job(tmp_path / "ub", tiny_checkpoint, tmp_path / "cache", strategy="upperbound",
                   **{**BY_ANSWERS, "finetune.upperbound": "learners"})
    result = ActiveLearningLoop(job, progress=False).run()
    assert result.answers == 0 and [r["answers"] for r in result.rounds] == [0, 0, 0]
    assert result.rounds[-1]["mAP"] != result.rounds[0]["mAP"]
    # it browses as a learner spending Kmax answers per query: ceil(5 / 3) queries a round
    assert json.loads((tmp_path / "ub" / "state.json").read_text())["next_query"] == 4


@pytest.mark.slow
def test_rounds_record_the_episode_trace(tmp_path, tiny_checkpoint):
    """Per round: questions, "same" answers, Eq. 9 return, picks that skipped a nearer open candidate."""
    traces = {}
    for strategy in ("nearest", "farthest"):
        out = tmp_path / strategy
        ActiveLearningLoop(tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy=strategy), progress=False).run()
        rows = pq.read_table(out / "rounds.parquet").to_pylist()
        _, _, answers = answered(out)
        assert sum(r["questions"] for r in rows[1:]) == len(answers)
        assert sum(r["same_answers"] for r in rows[1:]) == sum(a > 0 for a in answers)
        assert all(np.isfinite(r["mean_return"]) for r in rows[1:]) and np.isnan(rows[0]["mean_return"])
        traces[strategy] = [r["share_not_nearest"] for r in rows[1:]]
        links = [r["links_settled"] for r in rows]
        assert links[0] == 0 and links == sorted(links) and 0 < links[-1] <= 1
    assert traces["nearest"] == [0.0, 0.0] and min(traces["farthest"]) > 0.5
