"""ClusterStrategy: the clustering's boundary pair first, never a settled pair, state that round-trips."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from reidloop.config import STRATEGIES, AdaptConfig, DralConfig
from reidloop.dral.env import nearest_candidates
from reidloop.dral.metric import EuclideanMetric
from reidloop.strategies import RoundContext, Transition, build_strategy
from reidloop.strategies.cluster import ClusterStrategy

from conftest import pair_array, query_episode as episode, truthful_episode

LINE = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0]])


def ctx(features, pos=(), neg=()):
    return RoundContext(1, features, EuclideanMetric(), pair_array(pos), pair_array(neg))


def small(**kw) -> ClusterStrategy:
    """Parameters that cluster pools of a few images per identity."""
    return ClusterStrategy(seed=0, **{"eps": 0.5, "min_samples": 2, "k1": 3, "k2": 1, **kw})


def order(s, env, obs, mask) -> list[int]:
    """The pool indices ``s`` would ask, in turn, were every open candidate asked (no answers)."""
    mask, picks = mask.copy(), []
    while mask.any():
        a = s.select(env, obs, mask)
        assert mask[a]
        picks.append(int(env.candidates[a]))
        mask[a] = False
    return picks


def test_registered_under_its_name():
    assert "cluster" in STRATEGIES
    s = build_strategy("cluster", DralConfig(), seed=3)  # the adapt section's clustering (its defaults here)
    assert isinstance(s, ClusterStrategy) and s.asks_questions
    assert (s.eps, s.min_samples, s.k1, s.k2) == (AdaptConfig.eps, AdaptConfig.min_samples, AdaptConfig.k1, AdaptConfig.k2)
    t = build_strategy("cluster", DralConfig(), seed=3, adapt=AdaptConfig(eps=0.3, min_samples=3, k1=9, k2=2))
    assert (t.eps, t.min_samples, t.k1, t.k2) == (0.3, 3, 9, 2)  # one clustering for adaptation and questions
    with pytest.raises(ValueError, match="eps must be in"):
        ClusterStrategy(eps=1.5)
    assert t.eps_rho is None
    assert build_strategy("cluster", DralConfig(), adapt=AdaptConfig(eps_rho=2e-3)).eps_rho == 2e-3
    with pytest.raises(ValueError, match="eps_rho must be in"):
        ClusterStrategy(eps_rho=0.0)


def test_hand_built_boundary_first_then_inside_the_cluster_last():
    s = small(eps=0.5)
    s.begin_round(ctx(LINE))
    s.labels = np.array([0, 0, 1, -1, 1, 2])  # 1 shares the query's cluster, 3 is an outlier
    s.jaccard = np.zeros((6, 6), np.float32)
    s.jaccard[0, 1:5] = [0.5, 1.0, 0.75, 0.25]  # 1 sits right on eps, but inside the query's cluster
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4])
    # 4 and 3 are both 0.25 from eps (4 the nearer), then 2 (0.5 away), then the in-cluster 1
    assert order(s, env, obs, info["action_mask"]) == [4, 3, 2, 1]
    s.jaccard[0, 1:5] = [0.75, 0.75, 0.75, 0.75]
    s.labels = np.array([0, 1, 1, 1, 1, 2])
    assert order(s, env, obs, info["action_mask"]) == [1, 2, 3, 4]  # all tied: nearest first


# three identities of four tight images in 4-D
BLOBS = np.repeat(np.eye(3, 4) * 6, 4, axis=0) + np.random.default_rng(0).normal(size=(12, 4)) * 0.3


def test_asks_across_clusters_before_inside_the_query_cluster():
    s = small(eps=0.6)
    s.begin_round(ctx(BLOBS))
    np.testing.assert_array_equal(s.labels, np.repeat([0, 1, 2], 4))
    cands = nearest_candidates(EuclideanMetric().pairwise(BLOBS, BLOBS), 0, 4)  # 1, 2, 3 and one other
    env, obs, info = episode(BLOBS, 0, cands.tolist())
    first = order(s, env, obs, info["action_mask"])[0]
    assert s.labels[first] != s.labels[0]  # not the nearest: the one the clustering separates
    assert build_strategy("nearest", DralConfig()).select(env, obs, info["action_mask"]) != \
        list(cands).index(first)


def test_never_asks_a_pair_the_answers_settle():
    # 0~1~2 and 2≁3 settle (0, 1), (0, 2), (0, 3); the env's mask (no infer_answers) leaves them open
    s = small(eps=0.5)
    s.begin_round(ctx(LINE, pos=[(0, 1), (1, 2)], neg=[(2, 3)]))
    s.labels = np.array([0, 1, 2, 3, 0, 4])
    s.jaccard = np.zeros((6, 6), np.float32)
    s.jaccard[0, 1:5] = [0.5, 0.5, 0.5, 0.0]  # the settled ones sit on the boundary, 4 inside the cluster
    env, obs, info = episode(LINE, 0, [1, 2, 3, 4])
    mask = info["action_mask"]
    assert mask.all()
    a = s.select(env, obs, mask)
    assert env.candidates[a] == 4
    nxt, r, done, _, info = env.step_with_answer(a, -1)
    s.observe(Transition(obs, a, r, nxt, info["action_mask"], done, -1, 0, 4))
    assert s.knowledge.infer(1, 4) == -1  # learnt from the observed answer, by transitivity
    # only settled candidates left: any open one (the loop's mask allows it), the rule's pick among them
    assert s.select(env, nxt, info["action_mask"]) in np.flatnonzero(info["action_mask"])
    # another query whose candidates the observed answer settled: 5 is the only open question
    env2, obs2, info2 = episode(LINE, 4, [0, 1, 2, 5])
    s.jaccard[4, [0, 1, 2, 5]] = [0.5, 0.5, 0.5, 0.0]
    assert env2.candidates[s.select(env2, obs2, info2["action_mask"])] == 5


def test_contradictory_answers_are_left_out_not_raised():
    s = small()
    s.begin_round(ctx(LINE, pos=[(0, 1), (1, 2)], neg=[(0, 2), (3, 4)]))  # an erring annotator's log
    assert s.knowledge.infer(0, 2) == 1 and s.knowledge.infer(3, 4) == -1
    assert s.labels[0] == s.labels[1] == s.labels[2] >= 0 and s.labels[3] != s.labels[4]  # the kept answers hold


RT_F = np.repeat(np.eye(4, 6) * 3, 3, axis=0) + np.random.default_rng(0).normal(size=(12, 6)) * 0.5
RT_IDS = np.repeat(np.arange(4), 3)


def play(s, query: int) -> list[int]:
    """One episode on RT_F with truthful answers; the candidates asked, in order."""
    return truthful_episode(s, RT_F, RT_IDS, query, 4)


def test_a_restored_strategy_makes_the_same_choices():
    s = small()
    s.begin_round(ctx(RT_F, pos=[(0, 1)], neg=[(0, 3)]))
    play(s, 0)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    t = ClusterStrategy(seed=1, eps=0.5, min_samples=2, k1=3, k2=1)
    t.load_state_dict(torch.load(buf, weights_only=True))  # as the loop reloads it
    np.testing.assert_array_equal(t.labels, s.labels)
    assert t.knowledge.infer(0, 2) == s.knowledge.infer(0, 2) is not None  # an answer observed in play
    t.jaccard = s.jaccard  # the round's input: the loop gives it with begin_round
    assert [play(t, q) for q in (3, 6, 2)] == [play(s, q) for q in (3, 6, 2)]
    nxt = ctx(RT_F * 1.5, pos=[(0, 1), (3, 4)], neg=[(0, 3), (6, 9)])
    s.begin_round(nxt)
    t.begin_round(nxt)
    assert [play(t, q) for q in (1, 7, 10)] == [play(s, q) for q in (1, 7, 10)]


def test_clusters_camera_centred_features_when_the_round_knows_the_cameras():
    """Each camera adds its own offset to every image it takes: on the raw features the nearest images are
    other people under the same camera; centred per camera (as adaptation clusters), people come back."""
    rng = np.random.default_rng(1)
    people = rng.normal(size=(4, 8))
    pids, cams = np.repeat(np.arange(4), 4), np.tile([0, 0, 1, 1], 4)
    offset = np.zeros((2, 8))
    offset[0, 0], offset[1, 1] = 25.0, 25.0
    feats = (people[pids] + offset[cams] + rng.normal(size=(16, 8)) * 0.05).astype(np.float32)

    def clusters(s, cameras):
        s.begin_round(RoundContext(1, feats, EuclideanMetric(), pair_array(()), pair_array(()), cameras=cameras))
        return s.labels

    def spans_cameras(labels):  # every image shares its cluster with an image of the other camera
        return all(labels[i] >= 0 and np.any((labels == labels[i]) & (cams != cams[i])) for i in range(16))

    raw = clusters(small(k1=4, camera_centring=True), None)  # cameras unknown: the raw features
    assert not spans_cameras(raw)
    assert not spans_cameras(clusters(small(k1=4), cams))  # centring off
    centred = clusters(small(k1=4, camera_centring=True), cams)
    assert spans_cameras(centred)
    assert all(len(set(centred[pids == p])) == 1 for p in range(4)) and len(set(centred)) == 4  # the 4 people
    s = build_strategy("cluster", DralConfig(), adapt=AdaptConfig(camera_centring=False))
    assert not s.camera_centring and build_strategy("cluster", DralConfig()).camera_centring
