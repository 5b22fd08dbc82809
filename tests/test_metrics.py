"""Distances and Market-1501 CMC / mAP / mINP: hand-computed cases and a per-query brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidloop.metrics.rank as rank_module
from reidloop.metrics import RankResult, evaluate_rank, normalize, pairwise_distance


def brute_force_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The Market-1501 evaluation written the slow obvious way: one query at a time, one gallery image at a
    time. Returns (cmc, mAP, mINP, num_valid)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (distmat[i][j], j))  # ties: lower gallery index first
        good = []  # True/False per kept gallery image, in ranked order
        for j in order:
            if g_pids[j] == -1:
                continue  # junk
            if g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]:
                continue  # same person seen by the same camera
            good.append(g_pids[j] == q_pids[i])
        hit_ranks = [r + 1 for r, is_match in enumerate(good) if is_match]
        if not hit_ranks:
            continue
        aps.append(sum((m + 1) / r for m, r in enumerate(hit_ranks)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        cmcs.append([1.0 if hit_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def _random_protocol(seed, num_q=25, num_g=120, ties=False):
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 6, size=(num_q, num_g)).astype(np.float64) if ties else rng.random((num_q, num_g))
    g_pids = rng.integers(0, 12, num_g)
    g_pids[rng.random(num_g) < 0.1] = -1  # junk
    q_pids = rng.integers(0, 12, num_q)
    q_pids[:2] = 99  # never in the gallery -> invalid queries
    g_cams, q_cams = rng.integers(0, 3, num_g), rng.integers(0, 3, num_q)
    # A query whose only gallery matches share its camera -> invalid after the same-camera removal.
    q_pids[2], q_cams[2] = 50, 0
    g_pids[:3], g_cams[:3] = 50, 0
    return dist, q_pids, g_pids, q_cams, g_cams


def _assert_same(result: RankResult, expected) -> None:
    cmc, m_ap, m_inp, num_valid = expected
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
    assert result.mAP == pytest.approx(m_ap, abs=1e-12)
    assert result.mINP == pytest.approx(m_inp, abs=1e-12)
    assert result.num_valid_queries == num_valid


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_random(seed):
    args = _random_protocol(seed)
    result = evaluate_rank(*args, max_rank=20)
    expected = brute_force_rank(*args, max_rank=20)
    assert expected[3] <= 25 - 3  # the planted invalid queries were skipped
    _assert_same(result, expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_matches_brute_force_with_ties(seed, dtype):
    """float32/float16 take the packed-key sort, float64 the stable argsort: both break ties by gallery index."""
    dist, *ids = _random_protocol(seed, ties=True)
    dist = dist.astype(dtype)
    _assert_same(evaluate_rank(dist, *ids, max_rank=10), brute_force_rank(dist, *ids, max_rank=10))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_negative_distances_and_signed_zeros_rank_as_numbers(dtype):
    """Similarities negated, say: negative values order by value, and -0.0 ties with 0.0 (then by index)."""
    rng = np.random.default_rng(3)
    dist, *ids = _random_protocol(3, num_q=30, num_g=200, ties=True)
    dist = (dist - 3.0) * rng.choice([1.0, 0.5, 1e-3], size=dist.shape)
    dist[rng.random(dist.shape) < 0.05] = -0.0
    dist[rng.random(dist.shape) < 0.02] = -np.inf
    dist = dist.astype(dtype)
    assert np.signbit(dist[dist == 0]).any()
    _assert_same(evaluate_rank(dist, *ids, max_rank=10), brute_force_rank(dist, *ids, max_rank=10))


def test_query_chunking_gives_identical_results(monkeypatch):
    args = _random_protocol(7, num_q=40, num_g=90)
    whole = evaluate_rank(*args, max_rank=15)
    monkeypatch.setattr(rank_module, "_CHUNK_ELEMENTS", 200)  # 2 queries per chunk
    for threads in (1, 3, 8):  # chunks in threads: the same numbers, whatever the order they finish in
        chunked = evaluate_rank(*args, max_rank=15, threads=threads)
        np.testing.assert_array_equal(chunked.cmc, whole.cmc)
        assert (chunked.mAP, chunked.mINP, chunked.num_valid_queries) == \
            (whole.mAP, whole.mINP, whole.num_valid_queries)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        evaluate_rank(*args, threads=0)


# One query (pid 1, camera 0); gallery sorted by distance, all from camera 1:
#   rank:  1  2  3  4  5
#   pid :  2  1  3  1  4      -> true matches at ranks 2 and 4
HAND_DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
HAND_GPIDS = np.array([2, 1, 3, 1, 4])
HAND_GCAMS = np.ones(5, dtype=int)


def test_hand_computed_single_query():
    r = evaluate_rank(HAND_DIST, [1], HAND_GPIDS, [0], HAND_GCAMS, max_rank=5)
    # AP = (1/2 + 2/4) / 2 = 0.5 ; INP = 2 matches / rank 4 of the hardest = 0.5 ; first hit at rank 2.
    assert r.mAP == pytest.approx(0.5)
    assert r.mINP == pytest.approx(0.5)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1, 1])
    assert r.num_valid_queries == 1
    assert r.as_dict() == {"rank1": 0.0, "rank5": 1.0, "mAP": 0.5, "mINP": 0.5}


def test_hand_computed_gallery_order_is_by_distance_not_index():
    perm = np.array([4, 2, 0, 3, 1])  # same gallery, shuffled columns
    r = evaluate_rank(HAND_DIST[:, perm], [1], HAND_GPIDS[perm], [0], HAND_GCAMS[perm], max_rank=5)
    assert (r.mAP, r.mINP) == (pytest.approx(0.5), pytest.approx(0.5))


def test_same_camera_same_pid_is_removed_but_other_cases_stay():
    # Prepend, closest of all: pid 1 from the query's own camera 0 -> removed (else it would be a rank-1 hit).
    dist = np.array([[0.05, 0.1, 0.2, 0.3, 0.4, 0.5]])
    r = evaluate_rank(dist, [1], np.r_[1, HAND_GPIDS], [0], np.r_[0, HAND_GCAMS], max_rank=5)
    assert (r.mAP, r.mINP, r.rank(1)) == (pytest.approx(0.5), pytest.approx(0.5), 0.0)
    # Same camera but another pid is an ordinary negative: matches move to ranks 3 and 5.
    # AP = (1/3 + 2/5) / 2 = 11/30 ; INP = 2/5.
    r = evaluate_rank(dist, [1], np.r_[7, HAND_GPIDS], [0], np.r_[0, HAND_GCAMS], max_rank=5)
    assert r.mAP == pytest.approx(11 / 30)
    assert r.mINP == pytest.approx(2 / 5)
    # Same pid from another camera is a true match: hits at ranks 1, 3, 5 -> AP = (1 + 2/3 + 3/5)/3 = 34/45.
    r = evaluate_rank(dist, [1], np.r_[1, HAND_GPIDS], [0], np.r_[2, HAND_GCAMS], max_rank=5)
    assert r.mAP == pytest.approx(34 / 45)
    assert r.mINP == pytest.approx(3 / 5)
    assert r.rank(1) == 1.0


def test_junk_is_ignored_but_distractor_pid_zero_counts():
    dist = np.array([[0.1, 0.15, 0.2, 0.3, 0.4, 0.5]])
    pids_junk = np.array([2, -1, 1, 3, 1, 4])
    r = evaluate_rank(dist, [1], pids_junk, [0], np.ones(6, dtype=int), max_rank=5)
    assert (r.mAP, r.mINP) == (pytest.approx(0.5), pytest.approx(0.5))  # as if the junk image were absent
    pids_distractor = np.array([2, 0, 1, 3, 1, 4])
    r = evaluate_rank(dist, [1], pids_distractor, [0], np.ones(6, dtype=int), max_rank=5)
    assert r.mAP == pytest.approx(11 / 30)  # hits at ranks 3 and 5, as computed above


def test_two_queries_average_and_invalid_ones_skipped():
    # q0 (pid 5): its match is nearest -> AP 1, INP 1, rank-1 hit.  q1 = the hand case -> AP 0.5, INP 0.5.
    # q2 (pid 8): not in the gallery -> skipped.  q3 (pid 9): only match is same-camera -> skipped.
    dist = np.array([
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.0, 0.1],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    ])
    g_pids = np.r_[HAND_GPIDS, 5, 9]
    g_cams = np.r_[HAND_GCAMS, 1, 3]
    r = evaluate_rank(dist, [5, 1, 8, 9], g_pids, [0, 0, 0, 3], g_cams, max_rank=3)
    assert r.num_valid_queries == 2
    assert r.mAP == pytest.approx(0.75)
    assert r.mINP == pytest.approx(0.75)
    np.testing.assert_allclose(r.cmc, [0.5, 1.0, 1.0])


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_rank(HAND_DIST, [9], HAND_GPIDS, [0], HAND_GCAMS)
    with pytest.raises(ValueError, match="no valid query"):  # only match is from the query's camera
        evaluate_rank(HAND_DIST, [1], HAND_GPIDS, [1], HAND_GCAMS)
    with pytest.raises(ValueError, match="no valid query"):  # gallery is only junk
        evaluate_rank(HAND_DIST, [1], np.full(5, -1), [0], HAND_GCAMS)


def test_cmc_length_and_rank_accessor():
    r = evaluate_rank(HAND_DIST, [1], HAND_GPIDS, [0], HAND_GCAMS, max_rank=50)
    assert r.cmc.shape == (50,)
    np.testing.assert_allclose(r.cmc[4:], 1.0)  # past the 5 gallery images CMC stays at its final value
    assert r.rank(2) == 1.0
    d = r.as_dict()
    assert set(d) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert all(type(v) is float for v in d.values())
    with pytest.raises(ValueError, match="rank k must be in"):
        r.rank(51)
    with pytest.raises(ValueError, match="rank k must be in"):
        r.rank(0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
def test_torch_inputs_are_ranked_by_torch_as_numpy_ranks_them(dtype, ties):
    """A torch distance matrix is sorted by torch on its own device (the CUDA path; here on the CPU), with the
    same tie rule; junk columns, threads and chunks as for numpy."""
    dist, *ids = _random_protocol(3, num_q=30, num_g=150, ties=ties)
    t = torch.from_numpy(dist).to(dtype)
    want = evaluate_rank(t.double().numpy(), *ids, max_rank=10)
    got = evaluate_rank(t, *(torch.from_numpy(np.asarray(a)) for a in ids), max_rank=10, threads=2)
    np.testing.assert_array_equal(got.cmc, want.cmc)
    assert (got.mAP, got.mINP) == pytest.approx((want.mAP, want.mINP), abs=1e-12)
    with pytest.raises(ValueError, match="distmat contains NaN"):
        evaluate_rank(torch.full((2, 3), float("nan")), [0, 1], [0, 1, 2], [0, 0], [1, 1, 1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="g_pids has length 4, expected 5"):
        evaluate_rank(HAND_DIST, [1], HAND_GPIDS[:4], [0], HAND_GCAMS)
    with pytest.raises(ValueError, match="q_camids has length 2, expected 1"):
        evaluate_rank(HAND_DIST, [1], HAND_GPIDS, [0, 1], HAND_GCAMS)
    with pytest.raises(ValueError, match="distmat must be 2-D"):
        evaluate_rank(HAND_DIST[0], [1], HAND_GPIDS, [0], HAND_GCAMS)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((1, 5), np.nan), [1], HAND_GPIDS, [0], HAND_GCAMS)
    with pytest.raises(TypeError, match="g_pids must hold integers"):
        evaluate_rank(HAND_DIST, [1], HAND_GPIDS.astype(float), [0], HAND_GCAMS)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(HAND_DIST, [1], HAND_GPIDS, [0], HAND_GCAMS, max_rank=0)


# ---------------------------------------------------------------- distances


def _direct(a, b, metric):
    diff = a[:, None, :] - b[None, :, :]
    if metric == "euclidean":
        return np.sqrt((diff**2).sum(-1))
    if metric == "sqeuclidean":
        return (diff**2).sum(-1)
    return 1.0 - (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_distance_matches_direct_formula_numpy(metric, chunk_size):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    out = pairwise_distance(a, b, metric, chunk_size=chunk_size)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (7, 11)
    np.testing.assert_allclose(out, _direct(a, b, metric), rtol=1e-10, atol=1e-10)
    out32 = pairwise_distance(a.astype(np.float32), b.astype(np.float32), metric, chunk_size=chunk_size)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, _direct(a, b, metric), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_distance_matches_direct_formula_torch(metric):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    out = pairwise_distance(torch.from_numpy(a), torch.from_numpy(b), metric, chunk_size=4)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _direct(a, b, metric), rtol=1e-10, atol=1e-10)
    out32 = pairwise_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float(), metric)
    assert out32.dtype == torch.float32


def test_distance_is_clamped_non_negative_for_identical_rows():
    # Large, nearly cancelling terms: ||x||^2 + ||x||^2 - 2 x.x can round below zero without the clamp.
    rng = np.random.default_rng(2)
    x = (1000.0 + rng.normal(size=(50, 64))).astype(np.float32)
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        d = pairwise_distance(x, x, metric)
        assert np.isfinite(d).all() and (d >= 0).all()
        t = pairwise_distance(torch.from_numpy(x), torch.from_numpy(x), metric)
        assert torch.isfinite(t).all() and (t >= 0).all()


def test_integer_features_are_promoted():
    a = np.array([[0, 0], [3, 4]])
    np.testing.assert_allclose(pairwise_distance(a, a), [[0, 5], [5, 0]])
    assert pairwise_distance(a, a).dtype == np.float64


def test_distance_bad_inputs():
    a = np.zeros((2, 3))
    with pytest.raises(TypeError, match="must both be numpy arrays or both torch tensors"):
        pairwise_distance(a, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(a, a, "manhattan")
    with pytest.raises(ValueError, match="feature dimensions differ: a has 3, b has 4"):
        pairwise_distance(a, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="must be 2-D"):
        pairwise_distance(np.zeros(3), a)
    with pytest.raises(ValueError, match="chunk_size"):
        pairwise_distance(a, a, chunk_size=0)


def test_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.0, 0.0]])  # zero rows stay zero, no NaN
    t = normalize(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
