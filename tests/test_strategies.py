"""Each acquisition strategy's choice on small hand-made episodes."""
from __future__ import annotations

import numpy as np
import pytest

from reidloop.config import DralConfig
from reidloop.dral.env import QueryEpisodeEnv
from reidloop.dral.metric import EuclideanMetric
from reidloop.strategies import RoundContext, Transition, build_strategy
from reidloop.strategies.base import masked_argmax

NS = 4


def episode(features: np.ndarray, query: int, candidates, known=None) -> tuple[QueryEpisodeEnv, np.ndarray, dict]:
    env = QueryEpisodeEnv(ns=NS, kmax=NS, kappa=2, thred=0.4, margin=0.2)
    idx = np.concatenate([[query], candidates])
    D = EuclideanMetric().pairwise(features[idx], features[idx])
    obs, info = env.reset(options={"query": query, "candidates": np.array(candidates), "distances": D,
                                   "known": known or {}})
    return env, obs, info


def ctx(features, pos=(), neg=()):
    arr = lambda p: np.array(p, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return RoundContext(1, features, EuclideanMetric(), arr(pos), arr(neg))


# 1-D features: the query is item 0 at x=0; candidates at x = 1, 2, 3, 4
LINE = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0]])


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
    env, obs, info = episode(LINE, 0, [3, 1, 4, 2])  # candidates out of distance order
    mask = info["action_mask"].copy()
    picks = []
    while mask.any():
        a = s.select(env, obs, mask)
        picks.append(int(env.candidates[a]))
        mask[a] = False
    assert picks == [1, 2, 3, 4]
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4], known={0: 1, 1: -1})  # known pairs are skipped
    assert s.select(env, obs, info["action_mask"]) == 2


def test_qiu_asks_the_candidate_nearest_the_decision_boundary():
    s = build_strategy("qiu", DralConfig(), seed=0)
    # answered so far: a "same" pair at distance 1, a "different" pair at distance 4 → boundary 2.5
    s.begin_round(ctx(LINE, pos=[(0, 1)], neg=[(0, 4)]))
    assert s.boundary == pytest.approx(2.5)
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4])
    # normalised candidate distances are not used for the boundary: raw distances 1,2,3,4 → |d-2.5| ties 2 and 3
    assert s.select(env, obs, info["action_mask"]) == 1  # candidate x=2 (position 1), the lower tie
    mask = info["action_mask"].copy(); mask[1] = False
    assert s.select(env, obs, mask) == 2  # then x=3
    s.begin_round(ctx(LINE))  # no answers: boundary = median candidate distance (2.5)
    assert s.boundary is None and s.select(env, obs, info["action_mask"]) == 1


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
