"""What the answers imply: transitivity of "same", and "different" between groups."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from reidloop.dral.env import QueryEpisodeEnv
from reidloop.pair_knowledge import PairKnowledge


def test_same_is_transitive_and_different_spreads_over_groups():
    k = PairKnowledge(6, [(0, 1, 1), (1, 2, 1), (2, 3, -1)])
    assert k.infer(0, 2) == 1 and k.infer(2, 0) == 1  # 0~1, 1~2
    assert k.infer(0, 3) == -1 and k.infer(3, 1) == -1  # 0~2, 2!~3
    assert k.infer(3, 4) is None and k.infer(4, 5) is None  # nothing said about 4 and 5
    k.add(3, 4, 1)  # 4 joins 3's group, which is known different from {0, 1, 2}
    assert k.infer(4, 0) == -1 and k.infer(4, 3) == 1
    k.add(5, 0, 1)
    assert k.infer(5, 4) == -1 and k.infer(5, 2) == 1


def test_merging_two_groups_keeps_every_different_edge():
    k = PairKnowledge(8, [(0, 1, -1), (2, 3, -1), (4, 5, -1)])
    k.add(1, 2, 1)  # {1, 2}: different from 0 and from 3
    k.add(4, 2, 1)  # {1, 2, 4}: also different from 5
    for x in (1, 2, 4):
        assert [k.infer(x, y) for y in (0, 3, 5)] == [-1, -1, -1]
    assert k.infer(0, 3) is None  # both differ from {1, 2, 4}: that says nothing about each other


def test_agrees_with_ground_truth_on_random_answer_sequences():
    rng = np.random.default_rng(0)
    pids = rng.integers(0, 5, 30)
    k = PairKnowledge(30)
    pairs = list(itertools.combinations(range(30), 2))
    for i in rng.permutation(len(pairs))[:120]:
        a, b = pairs[i]
        if k.infer(a, b) is None:
            k.add(a, b, 1 if pids[a] == pids[b] else -1)
    settled = 0
    for a, b in pairs:  # whatever is implied is the truth
        y = k.infer(a, b)
        if y is not None:
            settled += 1
            assert y == (1 if pids[a] == pids[b] else -1)
    assert settled > 120  # and more is settled than was asked


def test_contradictions_and_bad_input_are_refused():
    k = PairKnowledge(4, [(0, 1, 1), (1, 2, -1)])
    with pytest.raises(ValueError, match=r"contradicts.*imply -1"):
        k.add(0, 2, 1)
    with pytest.raises(ValueError, match="contradicts"):
        k.add(1, 0, -1)
    k.add(0, 1, 1)  # repeating a consistent answer is harmless
    with pytest.raises(IndexError, match="pool index 4"):
        k.infer(0, 4)
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        k.add(2, 3, 0)
    with pytest.raises(ValueError, match="one image"):
        k.add(3, 3, 1)


def test_env_reveal_applies_answers_for_free():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3))
    D = np.linalg.norm(x[:, None] - x[None], axis=-1)
    env = QueryEpisodeEnv(ns=4, kmax=2, kappa=2, thred=0.4, margin=0.2)
    env.reset(options={"query": 0, "candidates": np.array([1, 2, 3, 4]), "distances": D})
    env.step_with_answer(0, 1)
    obs, info = env.reveal({2: -1, 3: 1})
    assert env.questions_asked == 1  # a reveal is not a question
    assert info["action_mask"].tolist() == [False, True, False, False]
    assert obs[-4:].tolist() == [1, 0, -1, 1]
    assert env.positives == [1, 4] and env.negatives == [3]
    with pytest.raises(ValueError, match="already answered"):
        env.reveal({2: 1})
    with pytest.raises(ValueError, match=r"position in \[0, 4\)"):
        env.reveal({7: 1})


def test_settled_batches_hold_the_queries_people_and_every_settled_pair():
    from reidloop.active.finetune import pair_batches

    # answers: 0~1, 1~2 (so 0~2 unasked), 0!~3, 3~4, and 5!~6 from another query
    q = np.array([0, 1, 0, 3, 5]); c = np.array([1, 2, 3, 4, 6]); y = np.array([1, 1, -1, 1, -1])
    k = PairKnowledge(7, zip(q, c, y))
    batches = list(pair_batches(q, c, y, per_batch=1, rng=np.random.default_rng(0), knowledge=k))
    by_first = {}
    for items, pos, neg in batches:
        glob_pos = {tuple(sorted((int(items[a]), int(items[b])))) for a, b in pos}
        glob_neg = {tuple(sorted((int(items[a]), int(items[b])))) for a, b in neg}
        by_first[tuple(items.tolist())] = (glob_pos, glob_neg)
    # query 0's batch: its answered candidates 1, 3, plus 2 (known to be 0's person, never asked with 0)
    pos, neg = by_first[(0, 1, 2, 3)]
    assert pos == {(0, 1), (0, 2), (1, 2)}
    assert neg == {(0, 3), (1, 3), (2, 3)}
    assert by_first[(0, 1, 2)] == ({(0, 1), (0, 2), (1, 2)}, set())  # query 1: 1~2, and 0 is 1's person
    assert by_first[(3, 4)] == ({(3, 4)}, set())
    # without knowledge, the same query's batch is its two answers only
    plain = [b for b in pair_batches(q, c, y, per_batch=1, rng=np.random.default_rng(0)) if 0 in b[0][:1]]
    assert [len(p) + len(n) for _, p, n in plain] == [2]


def test_knowledge_from_an_erring_log_skips_contradictions():
    k = PairKnowledge(3, [(0, 1, 1), (1, 2, 1), (0, 2, -1)], strict=False)
    assert k.conflicts == 1 and k.infer(0, 2) == 1


@pytest.mark.parametrize("reward", ["eq9", "links"])
def test_links_reward_pays_for_the_links_an_answer_establishes(reward):
    """dral.reward=links: 1 per "same" answer plus 1 per candidate it shows to be the query's person."""
    from reidloop.active.engine import Answers, EpisodeStats, LocalAgent, LocalSlots, run_round
    from reidloop.config import DralConfig
    from reidloop.oracle import ask_each
    from reidloop.dral.metric import EuclideanMetric
    from reidloop.strategies.nearest import NearestStrategy

    class Recording(NearestStrategy):
        def __init__(self):
            super().__init__()
            self.seen = []

        def observe(self, t):
            self.seen.append((t.candidate, t.answer, t.reward))

    labels = np.array([0, 0, 1, 0, 2, 1, 3])
    features = np.arange(7, dtype=np.float32)[:, None]
    knowledge = PairKnowledge(7, [(1, 3, 1)])  # 1 ~ 3 known before the episode (not about the query)
    dral = DralConfig(ns=6, kmax=3, kappa=3, reward=reward)

    class Labels:  # the truth, unlimited
        remaining = None

        def known(self, q, c):
            return None

        def ask(self, q, c, **_):
            return 1 if labels[q] == labels[c] else -1

        def ask_batch(self, questions, strategy):
            return ask_each(self, questions, strategy)

    strategy, stats = Recording(), EpisodeStats(gamma=0.9)
    run_round(LocalSlots(dral, features, EuclideanMetric()), LocalAgent(strategy), Answers(Labels(), knowledge),
              np.array([0]), np.arange(1, 7)[None], 1, dral.kmax, reward_kind=reward, stats=stats)
    # nearest-first: 1 is "same" and settles 3 (1 ~ 3) for free; then 2 "different" (and 5 ~ 2 is unknown)
    assert [(c, y) for c, y, _ in strategy.seen] == [(1, 1), (2, -1), (4, -1)]
    if reward == "links":
        assert [r for _, _, r in strategy.seen] == [2.0, 0.0, 0.0]
    else:
        assert stats.returns == [pytest.approx(sum(0.9 ** i * r for i, (_, _, r) in enumerate(strategy.seen)))]
    assert (stats.questions, stats.same, stats.episodes) == (3, 1, 1)


def test_settled_link_share_counts_same_person_pairs_settled_by_transitivity():
    from reidloop.active.loop import settled_link_share

    pids = np.array([0, 0, 0, 1, 1, 2])
    ask = lambda *rows: tuple(np.array(col) for col in zip(*rows)) if rows else (np.empty(0, int),) * 3  # noqa: E731
    assert settled_link_share(ask(), pids) == 0.0
    # 0~1 and 1~2 settle all three pairs of person 0 (0~2 by transitivity); person 1's pair is open: 3 / 4
    assert settled_link_share(ask((0, 1, 1), (1, 2, 1), (2, 3, -1)), pids) == pytest.approx(0.75)
    # an erring "same" between two people settles no true link
    assert settled_link_share(ask((0, 5, 1)), pids) == 0.0


def test_constraints_state_exactly_what_the_answers_settle():
    k = PairKnowledge(7, [(1, 2, 1), (2, 0, 1), (3, 4, -1), (2, 3, -1), (5, 6, 1), (6, 3, -1)])
    must, cannot = k.constraints()
    assert must.tolist() == [[0, 1], [0, 2], [5, 6]]  # each member with its group's root (the smallest)
    assert cannot.tolist() == [[0, 3], [3, 4], [3, 5]]
    again = PairKnowledge(7, [*((a, b, 1) for a, b in must.tolist()), *((a, b, -1) for a, b in cannot.tolist())])
    for a, b in itertools.combinations(range(7), 2):  # the constraints imply exactly what the answers do
        assert again.infer(a, b) == k.infer(a, b)
    empty = PairKnowledge(3).constraints()
    assert empty[0].shape == (0, 2) and empty[1].shape == (0, 2)


def test_constraints_of_random_answers_imply_the_same_pairs():
    rng = np.random.default_rng(1)
    pids = rng.integers(0, 6, 25)
    k = PairKnowledge(25)
    for a, b in rng.integers(0, 25, (60, 2)).tolist():
        if a != b and k.infer(a, b) is None:
            k.add(a, b, 1 if pids[a] == pids[b] else -1)
    must, cannot = k.constraints()
    again = PairKnowledge(25, [*((a, b, 1) for a, b in must.tolist()), *((a, b, -1) for a, b in cannot.tolist())])
    assert all(again.infer(a, b) == k.infer(a, b) for a, b in itertools.combinations(range(25), 2))
    assert len(must) == 25 - len(set(k.roots().tolist()))
