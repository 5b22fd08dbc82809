"""Each acquisition strategy's choice on small hand-made episodes."""
from __future__ import annotations

import numpy as np
import pytest

from reidloop.config import DralConfig
from reidloop.dral.metric import EuclideanMetric
from reidloop.strategies import RoundContext, Transition, build_strategy
from reidloop.strategies.base import masked_argmax

from conftest import pair_array, query_episode as episode, truthful_episode

NS = 4  # query_episode's ns


def ctx(features, pos=(), neg=()):
    return RoundContext(1, features, EuclideanMetric(), pair_array(pos), pair_array(neg))


# 1-D features: the query is item 0 at x=0; candidates at x = 1, 2, 3, 4
LINE = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0]])


def pick_order(s, candidates) -> list[int]:
    """The candidates in the order ``s`` would ask all of them about query 0 on LINE."""
    env, obs, info = episode(LINE, 0, candidates)
    mask = info["action_mask"].copy()
    picks = []
    while mask.any():
        a = s.select(env, obs, mask)
        picks.append(int(env.candidates[a]))
        mask[a] = False
    return picks


def test_masked_argmax_skips_masked_and_breaks_ties_low():
    assert masked_argmax(np.array([5.0, 9.0, 9.0, 1.0]), np.array([True, False, True, True])) == 2
    with pytest.raises(ValueError, match="no askable candidate"):
        masked_argmax(np.zeros(3), np.zeros(3, dtype=bool))


def test_random_only_picks_askable_candidates():
    s = build_strategy("random", DralConfig(), seed=0)
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4], known={0: 1, 2: -1})
    picks = {s.select(env, obs, info["action_mask"]) for _ in range(200)}
    assert picks == {1, 3}


def test_nearest_asks_the_nearest_askable_candidate():
    s = build_strategy("nearest", DralConfig(), seed=0)
    assert pick_order(s, [3, 1, 4, 2]) == [1, 2, 3, 4]  # candidates out of distance order
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4], known={0: 1, 1: -1})  # known pairs are skipped
    assert s.select(env, obs, info["action_mask"]) == 2


# 1-D: query 0 at x=0; a "same" pair at distance 1 (item 1) and a "different" one at 4 (item 2)
QIU_F = np.array([[0.0], [1.0], [4.0], [2.3], [3.2], [0.5], [6.0]])


def test_qiu_asks_the_candidate_nearest_its_fitted_boundary():
    s = build_strategy("qiu", DralConfig(), seed=0)
    s.begin_round(ctx(QIU_F, pos=[(0, 1)], neg=[(0, 2)]))
    assert s.boundary == pytest.approx(2.5, abs=1e-6)  # the fit on {1: same, 4: different} is symmetric
    env, obs, info = episode(QIU_F, 0, [5, 3, 4, 6])  # distances 0.5, 2.3, 3.2, 6
    assert s.select(env, obs, info["action_mask"]) == 1  # 2.3: P(same) nearest 0.5, not the nearest (0.5)
    mask = info["action_mask"].copy(); mask[1] = False
    assert s.select(env, obs, mask) == 2  # then 3.2


def test_qiu_is_nearest_first_until_both_answer_kinds_then_refits_on_each_answer():
    s = build_strategy("qiu", DralConfig(), seed=0)
    s.begin_round(ctx(QIU_F))  # no answers yet
    env, obs, info = episode(QIU_F, 0, [5, 1, 3, 4])  # distances 0.5, 1, 2.3, 3.2
    mask = info["action_mask"].copy()

    def ask(a, y):
        obs2, r, done, _, info2 = env.step_with_answer(a, y)
        s.observe(Transition(obs, a, r, obs2, info2["action_mask"], done, y, 0, int(env.candidates[a])))
        mask[a] = False

    assert s.boundary is None and s.select(env, obs, mask) == 0
    ask(0, 1)  # "same" at 0.5: still only one kind
    assert s.boundary is None and s.select(env, obs, mask) == 1  # nearest open
    ask(3, -1)  # "different" at 3.2: boundary between them (1.85 by symmetry)
    assert s.boundary == pytest.approx(1.85, abs=1e-6)
    assert s.select(env, obs, mask) == 2  # |2.3 - 1.85| < |1 - 1.85|: not the nearest open one


def test_qbc_asks_where_the_committee_disagrees():
    s = build_strategy("qbc", DralConfig(), seed=0)
    # 2-D: dim 0 says candidate 1 is the match, dim 1 says candidate 2; candidates 3, 4 are far in both
    f = np.array([[0, 0], [0, 5], [5, 0], [9, 9], [8, 9]], dtype=float)
    s.begin_round(ctx(f))
    s.top = 1
    s.dims = [np.array([0]), np.array([1])] * 4  # half the members look at each dimension
    env, obs, info = episode(f, 0, [1, 2, 3, 4])
    votes = s.votes(env)
    assert votes[:, 2:].sum() == 0 and votes[:, :2].all(axis=1).sum() == 0
    assert s.select(env, obs, info["action_mask"]) in (0, 1)  # maximal disagreement: p = 0.5
    mask = info["action_mask"].copy(); mask[:2] = False
    assert s.select(env, obs, mask) == 2  # all agree elsewhere: nearest unasked


def test_gd_prefers_dense_regions_and_then_spreads_out():
    s = build_strategy("gd", DralConfig(), seed=0)
    s.k = 2
    # a tight cluster (1, 2, 3) and two isolated points (4, 5)
    f = np.array([[0.0, 0], [5, 5], [5.1, 5], [5, 5.1], [20, 0], [0, 20]])
    s.begin_round(ctx(f))
    assert s.density[1:4].min() > s.density[4:].max()
    env, obs, info = episode(f, 0, [1, 4, 5, 2])
    first = s.select(env, obs, info["action_mask"])
    assert first in (0, 3)  # a cluster member
    before = s.density.copy()
    s.observe(Transition(obs, first, 0.0, obs, info["action_mask"], False, 1, 0, int(env.candidates[first])))
    asked = int(env.candidates[first])
    nbrs = s.nbr_idx[asked]
    assert (s.density[nbrs] < before[nbrs]).all()  # its neighbours became less attractive
    assert s.density[asked] == 0  # and so did the asked image itself


def test_gd_does_not_ask_the_same_hub_twice_in_a_row():
    s = build_strategy("gd", DralConfig(), seed=0)
    s.k = 2
    f = np.array([[0, 0], [0, 0.4],  # two queries
                  [5, 5], [5, 5.3], [5.3, 5], [4.7, 5], [5, 4.7],  # a hub (2) in its ring (3-6)
                  [9, 9], [9, 9.35], [9.35, 9], [8.65, 9]])  # a slightly looser cluster (7-10)
    s.begin_round(ctx(f))
    assert s.density.argmax() == 2
    env, obs, info = episode(f, 0, [2, 3, 7, 8])
    a = s.select(env, obs, info["action_mask"])
    assert env.candidates[a] == 2
    s.observe(Transition(obs, a, 0.0, obs, info["action_mask"], False, -1, 0, 2))
    env, obs, info = episode(f, 1, [2, 4, 9, 10])  # the next query's list holds the hub too
    assert env.candidates[s.select(env, obs, info["action_mask"])] != 2


def test_farthest_asks_the_farthest_open_candidate():
    assert pick_order(build_strategy("farthest", DralConfig(), seed=0), [3, 1, 4, 2]) == [4, 3, 2, 1]


def test_qbc_member_vote_changes_after_a_contradicting_answer():
    from reidloop.strategies.qbc import QBCStrategy

    s = QBCStrategy(seed=0, bootstrap=False)  # every member trains on every answer
    f = np.array([[0, 0], [1, 1], [4, 4], [2, 2], [3, 3], [5, 5], [6, 6]], dtype=float)
    s.begin_round(ctx(f, pos=[(0, 1)], neg=[(0, 2)]))  # each member: boundary at 2.5 on its dimension
    assert s.trained.all()
    env, obs, info = episode(f, 0, [3, 4, 5, 6])
    assert s.votes(env)[:, 0].all()  # the pair (0, 3), at 2: "same" for every member
    s.observe(Transition(obs, 0, 0.0, obs, info["action_mask"], False, -1, 0, 3))  # annotator: different
    assert not s.votes(env)[:, 0].any()


def test_qbc_members_without_both_answer_kinds_keep_the_nearest_rule():
    from reidloop.strategies.qbc import QBCStrategy

    s = QBCStrategy(seed=0)
    s.begin_round(ctx(LINE, pos=[(0, 1)]))
    assert not s.trained.any() and s.top == 1
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4])
    assert s.votes(env)[:, 0].all() and not s.votes(env)[:, 1:].any()


# four identities of three images each in 6-D, for replaying whole episodes
RT_F = np.repeat(np.eye(4, 6) * 3, 3, axis=0) + np.random.default_rng(0).normal(size=(12, 6))
RT_IDS = np.repeat(np.arange(4), 3)


def play(s, query: int) -> list[int]:
    """One episode on RT_F with truthful answers; the candidates asked, in order."""
    return truthful_episode(s, RT_F, RT_IDS, query, NS)


@pytest.mark.parametrize("name", ["qiu", "qbc", "gd"])
def test_a_restored_strategy_makes_the_same_choices(name):
    import io

    import torch

    s = build_strategy(name, DralConfig(), seed=0)
    s.begin_round(ctx(RT_F, pos=[(0, 1)], neg=[(0, 3)]))
    play(s, 0)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    t = build_strategy(name, DralConfig(), seed=1)
    t.load_state_dict(torch.load(buf, weights_only=True))  # as the loop reloads it
    if name in ("qbc", "qiu"):  # the round's input, not state: the loop gives it with begin_round
        t.features = s.features
        t.metric = getattr(s, "metric", None)
    assert [play(t, q) for q in (3, 6)] == [play(s, q) for q in (3, 6)]  # mid-round: the state decides
    # the loop's resume: restore, then begin the next round on the answers so far
    nxt = ctx(RT_F * 1.5, pos=[(0, 1), (3, 4)], neg=[(0, 3), (6, 9)])
    s.begin_round(nxt)
    t.begin_round(nxt)
    assert [play(t, q) for q in (1, 7, 10)] == [play(s, q) for q in (1, 7, 10)]


def test_dral_agent_picks_valid_actions_and_learns_from_answers():
    cfg = DralConfig(ns=NS, kmax=NS, kappa=2, batch_size=4, replay_size=64, epsilon_start=0.0, epsilon_end=0.0)
    s = build_strategy("dral", cfg, seed=0)
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4], known={0: 1})
    mask = info["action_mask"]
    for _ in range(20):
        a = s.select(env, obs, mask)
        assert mask[a]
        s.observe(Transition(obs, a, 1.0, obs, mask, True, 1, 0, int(env.candidates[a])))
    assert s.steps == 20 and len(s.losses) > 0
    state = s.state_dict()
    t = build_strategy("dral", cfg, seed=1)
    t.load_state_dict(state)
    np.testing.assert_allclose(t.agent.q_values(obs), s.agent.q_values(obs))


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'foo' is not one of"):
        build_strategy("foo", DralConfig())


@pytest.mark.parametrize("name", ["baseline", "upperbound"])
def test_references_never_ask(name):
    s = build_strategy(name, DralConfig())
    assert not s.asks_questions
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4])
    with pytest.raises(RuntimeError, match="asks no questions"):
        s.select(env, obs, info["action_mask"])
