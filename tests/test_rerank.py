"""k-reciprocal re-ranking: against a loop transcription of Zhong et al.'s reference, and on clustered data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidloop.metrics.rerank as rerank_module
from reidloop.metrics import evaluate_rank, k_reciprocal_rerank, pairwise_distance, rerank_from_features


def loop_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """The authors' published algorithm written plainly with dense matrices and per-image loops."""
    q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
    dist = (full / full.max(axis=0)).T
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, :k + 1]
        return np.array([j for j in fwd if i in rank[j, :k + 1]], dtype=np.int64)

    half = int(round(k1 / 2.0))
    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = recip(i, k1)
        expanded = list(r)
        for c in r:
            rc = recip(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expanded.extend(rc)
        idx = np.unique(expanded)
        w = np.exp(-dist[i, idx])
        V[i, idx] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.zeros((q, n), dtype=np.float32)
    for i in range(q):
        for j in range(n):
            mn = np.minimum(V[i], V[j]).sum()
            jac[i, j] = 1.0 - mn / (2.0 - mn)
    final = (1 - lambda_value) * jac + lambda_value * dist[:q]
    return final[:, q:]


def _dists(qf, gf):
    return pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 5, 3, 0.5), (2, 4, 1, 0.0), (3, 7, 2, 0.9)])
def test_matches_loop_reference(seed, k1, k2, lam):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8))
    qf = (centres[rng.integers(0, 6, 9)] + 0.6 * rng.normal(size=(9, 8))).astype(np.float32)
    gf = (centres[rng.integers(0, 6, 31)] + 0.6 * rng.normal(size=(31, 8))).astype(np.float32)
    qg, qq, gg = _dists(qf, gf)
    np.fill_diagonal(qq, 0.0)
    np.fill_diagonal(gg, 0.0)
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    want = loop_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert got.dtype == np.float32 and got.shape == (9, 31)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_ties_broken_like_stable_argsort(seed):
    """Integer features on a tiny grid give many exactly equal distances (and duplicate images); neighbour
    lists must be those of a stable full argsort, as in the loop reference."""
    rng = np.random.default_rng(seed)
    qf = rng.integers(0, 3, size=(6, 3)).astype(np.float32)
    gf = rng.integers(0, 3, size=(25, 3)).astype(np.float32)
    qg, qq, gg = _dists(qf, gf)
    for k1, k2 in ((3, 2), (6, 4)):
        np.testing.assert_allclose(k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2),
                                   loop_rerank(qg, qq, gg, k1=k1, k2=k2), rtol=1e-5, atol=1e-5)


def test_chunking_gives_identical_results(monkeypatch):
    rng = np.random.default_rng(9)
    qg, qq, gg = _dists(rng.normal(size=(7, 4)), rng.normal(size=(30, 4)))
    whole = k_reciprocal_rerank(qg, qq, gg, k1=6, k2=3)
    monkeypatch.setattr(rerank_module, "_CHUNK_ELEMENTS", 100)  # a few rows per chunk in every stage
    np.testing.assert_array_equal(k_reciprocal_rerank(qg, qq, gg, k1=6, k2=3), whole)


def test_shape_finite_and_range():
    rng = np.random.default_rng(4)
    out = rerank_from_features(rng.normal(size=(12, 5)), rng.normal(size=(40, 5)), k1=6, k2=3)
    assert out.shape == (12, 40) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


def test_accepts_torch_features():
    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(10, 3)).astype(np.float32)
    want = rerank_from_features(qf, gf, k1=4, k2=2)
    got = rerank_from_features(torch.from_numpy(qf), torch.from_numpy(gf), k1=4, k2=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lambda_one_is_row_normalised_original():
    rng = np.random.default_rng(6)
    qf, gf = rng.normal(size=(5, 4)), rng.normal(size=(20, 4))
    qg, qq, gg = _dists(qf, gf)
    out = k_reciprocal_rerank(qg, qq, gg, k1=5, k2=3, lambda_value=1.0)
    row_max = np.maximum(qq.max(axis=1), qg.max(axis=1)) ** 2
    np.testing.assert_allclose(out, qg**2 / row_max[:, None], rtol=1e-5)
    # A per-query monotone rescaling: the ranking is exactly the original one.
    np.testing.assert_array_equal(np.argsort(out, axis=1, kind="stable"), np.argsort(qg, axis=1, kind="stable"))


def test_k1_larger_than_dataset_matches_reference():
    rng = np.random.default_rng(7)
    qf, gf = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    qg, qq, gg = _dists(qf, gf)
    np.fill_diagonal(qq, 0.0)
    np.fill_diagonal(gg, 0.0)
    np.testing.assert_allclose(k_reciprocal_rerank(qg, qq, gg, k1=20, k2=10),
                               loop_rerank(qg, qq, gg, k1=20, k2=10), rtol=1e-5, atol=1e-5)


def _sphere(rng, n, dim, radius):
    v = rng.normal(size=(n, dim))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_improves_map_on_clusters(seed):
    """Per identity (far-apart random centres c): the query at c, its 6 true matches on a sphere of radius 1.2
    around it, and a wrong-identity image w at distance 1.0 -- the query's raw nearest neighbour -- which sits
    inside a crowd of 10 distractors at radius 0.9 around w. w's own k1 nearest neighbours are that crowd, so
    w is not a k-reciprocal neighbour of the query while the true matches are: re-ranking demotes w.
    (In 64-d, query-to-crowd distances are ~sqrt(1.0^2 + 0.9^2) = 1.35 > 1.2, so the matches come next.)"""
    rng = np.random.default_rng(seed)
    num_ids, per_id, crowd, dim = 8, 6, 10, 64
    qf, gf, g_pids = [], [], []
    for pid in range(num_ids):
        centre = 20.0 * rng.normal(size=dim)
        qf.append(centre)
        gf.append(centre + _sphere(rng, per_id, dim, 1.2))
        wrong = centre + _sphere(rng, 1, dim, 1.0)
        gf += [wrong, wrong + _sphere(rng, crowd, dim, 0.9)]
        g_pids += [pid] * per_id + [1000 + pid] * (crowd + 1)
    qf, gf, g_pids = np.stack(qf), np.concatenate(gf), np.array(g_pids)
    q_pids = np.arange(num_ids)
    q_cams, g_cams = np.zeros(num_ids, dtype=np.int64), np.ones(len(g_pids), dtype=np.int64)

    qg, qq, gg = _dists(qf, gf)
    raw = evaluate_rank(qg, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert raw.rank(1) == 0.0  # the planted wrong image is every query's raw nearest neighbour
    reranked = evaluate_rank(k_reciprocal_rerank(qg, qq, gg), q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert reranked.rank(1) >= 0.75
    assert reranked.mAP > raw.mAP + 0.1


@pytest.mark.parametrize("kwargs,match", [
    ({"k1": 0}, "k1"), ({"k2": 0}, "k2"), ({"lambda_value": 1.5}, "lambda_value"),
])
def test_bad_parameters(kwargs, match):
    d = np.ones((2, 3))
    with pytest.raises(ValueError, match=match):
        k_reciprocal_rerank(d, np.zeros((2, 2)), np.zeros((3, 3)), **kwargs)


def test_bad_shapes_and_values():
    with pytest.raises(ValueError, match="g_g_dist must have shape"):
        k_reciprocal_rerank(np.ones((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="q_q_dist contains NaN"):
        k_reciprocal_rerank(np.ones((2, 3)), np.full((2, 2), np.nan), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="q_g_dist contains negative"):
        k_reciprocal_rerank(-np.ones((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))
