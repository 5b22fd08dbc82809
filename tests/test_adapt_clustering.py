"""Pseudo-labels for unsupervised adaptation: Jaccard distance, DBSCAN, answer constraints, camera proxies."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score as ari

from reidloop.adapt import auto_eps, cluster, dbscan, jaccard_distance, proxies


def blobs(cam_offset: float, ids: int = 8, per: int = 6, dim: int = 16, seed: int = 0):
    """``ids`` identities × ``per`` images (half per camera): gaussian blobs, one camera shift per camera."""
    rng = np.random.default_rng(seed)
    ident = np.repeat(np.arange(ids), per)
    cam = np.tile(np.repeat([0, 1], per // 2), ids)
    centres = rng.normal(size=(ids, dim)) * 4  # identities about 22 apart
    shift = rng.normal(size=(2, dim))
    shift *= cam_offset / np.sqrt(2) / np.linalg.norm(shift, axis=1, keepdims=True)  # cameras ~cam_offset apart
    feats = centres[ident] + shift[cam] + rng.normal(size=(ids * per, dim)) * 0.5
    return feats.astype(np.float32), ident, cam


def reference_jaccard(f: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Zhong et al.'s reference re-ranking code, dense, the set against itself (cluster-contrast's use)."""
    d = ((f[:, None].astype(np.float64) - f[None]) ** 2).sum(-1)
    d = d / d.max(axis=1, keepdims=True)
    n, kh = len(f), int(np.around(k1 / 2))
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, :k + 1]
        return fwd[np.where(rank[fwd, :k + 1] == i)[0]]

    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        exp = r.copy()
        for c in r:
            rc = recip(c, kh)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                exp = np.append(exp, rc)
        exp = np.unique(exp)
        w = np.exp(-d[i, exp])
        V[i, exp] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    mins = np.stack([np.minimum(V[i][None], V).sum(1) for i in range(n)])
    return 1 - mins / (2 - mins)


@pytest.mark.parametrize("k1,k2", [(6, 2), (20, 6), (4, 1)])
def test_jaccard_matches_the_reference_and_is_a_proper_matrix(k1, k2):
    f = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    J = jaccard_distance(f, k1, k2)
    assert J.dtype == np.float32 and J.shape == (30, 30)
    np.testing.assert_array_equal(J, J.T)
    assert (np.diag(J) == 0).all() and J.min() >= 0 and J.max() <= 1
    np.testing.assert_allclose(J, reference_jaccard(f, k1, k2), atol=2e-5)
    np.testing.assert_allclose(jaccard_distance(f * 7.5, k1, k2), J, atol=1e-5)  # scale-free


def test_jaccard_edge_cases_and_errors():
    assert jaccard_distance(np.zeros((1, 3))).shape == (1, 1)
    with pytest.raises(ValueError, match="features must be a numeric"):
        jaccard_distance(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        jaccard_distance(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="k1 must be a positive int, got 0"):
        jaccard_distance(np.zeros((3, 2)), k1=0)


def test_auto_eps_is_the_mean_of_the_smallest_share_of_pair_distances():
    d = np.zeros((4, 4), dtype=np.float32)
    d[np.triu_indices(4, 1)] = [0.5, 0.1, 0.6, 0.3, 0.2, 0.4]  # the 6 pairs
    d = d + d.T
    assert auto_eps(d, 0.34) == pytest.approx((0.1 + 0.2 + 0.3) / 3)  # ceil(0.34 * 6) = 3 pairs
    assert auto_eps(d, 1e-9) == pytest.approx(0.1)  # at least one pair
    assert auto_eps(d, 1.0) == pytest.approx(0.35)
    for bad, match in ((0.0, "rho"), (1.5, "rho"), (True, "rho")):
        with pytest.raises(ValueError, match=match):
            auto_eps(d, bad)
    with pytest.raises(ValueError, match="N >= 2"):
        auto_eps(np.zeros((1, 1)), 0.1)
    # zero distances (images with the same k-reciprocal neighbours) do not pull the radius to 0
    z = d.copy()
    z[0, 1] = z[1, 0] = z[0, 2] = z[2, 0] = 0.0  # pairs 0.5 and 0.1 become 0
    assert auto_eps(z, 0.34) == pytest.approx((0.2 + 0.3 + 0.4) / 3)
    assert auto_eps(z, 1.0) == pytest.approx((0.6 + 0.3 + 0.2 + 0.4) / 4)  # only 4 positive of 6
    with pytest.raises(ValueError, match="every one of the 6 pairwise distances is 0"):
        auto_eps(np.zeros((4, 4)), 0.5)


def test_auto_eps_a_little_above_the_same_person_share_recovers_separable_identities():
    f, ident, _ = blobs(cam_offset=1.0)
    dist = jaccard_distance(f, k1=6, k2=2)
    same_share = sum(c * (c - 1) / 2 for c in np.bincount(ident)) / (len(ident) * (len(ident) - 1) / 2)
    eps = auto_eps(dist, 1.5 * same_share)  # a little above it (Song et al.: 1.6e-3 on Market-1501, ~1.2e-3)
    assert 0 < eps < 1
    assert ari(cluster(dist, eps, min_samples=4), ident) >= 0.9
    assert auto_eps(dist, 0.5 * same_share) < eps  # a smaller share, a tighter radius


def test_separable_identities_are_recovered():
    f, ident, _ = blobs(cam_offset=1.0)
    labels = cluster(jaccard_distance(f, k1=6, k2=2), eps=0.6, min_samples=4)
    assert ari(labels, ident) >= 0.9
    assert labels.max() + 1 == len(np.unique(labels[labels >= 0]))  # contiguous 0..C-1


def test_must_links_repair_a_camera_split():
    f, ident, cam = blobs(cam_offset=4.0)
    J = jaccard_distance(f, k1=3, k2=1)
    plain = cluster(J, eps=0.5, min_samples=2)
    assert ari(plain, ident * 2 + cam) >= 0.9 and ari(plain, ident) < 0.7  # grouped by camera
    first = np.flatnonzero(cam == 0)[::3]  # one image per identity on each camera
    second = np.flatnonzero(cam == 1)[::3]
    repaired = cluster(J, eps=0.5, min_samples=2, must_link=np.stack([first, second], 1))
    assert ari(repaired, ident) >= 0.99


def line_dist(x):
    x = np.asarray(x, dtype=np.float64)
    return np.abs(x[:, None] - x[None])


# one DBSCAN chain 0..5 at spacing 1 (eps 1.5), an outlier at 20, a pair at 40/41 too small to be a cluster
LINE = line_dist([0, 1, 2, 3, 4, 5, 20, 40, 41])


def test_dbscan_core_border_and_outliers():
    labels = dbscan(LINE, eps=1.5, min_samples=3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0, 0, -1, -1, -1])  # 0 and 5 are border points


def test_cannot_link_splits_a_cluster_dbscan_would_keep_whole():
    labels = cluster(LINE, eps=1.5, min_samples=3, cannot_link=[[0, 5]])
    assert labels[0] != labels[5] and labels[0] >= 0 and labels[5] >= 0
    np.testing.assert_array_equal(labels[:6], [0, 0, 0, 1, 1, 1])  # each member to its nearer side
    assert (labels[6:] == -1).all()


def test_must_link_joins_outliers_and_clusters():
    labels = cluster(LINE, eps=1.5, min_samples=3, must_link=[[2, 6], [7, 8]])
    assert labels[6] == labels[2]  # an outlier linked to a cluster joins it
    assert labels[7] == labels[8] >= 0 and labels[7] != labels[0]  # two linked outliers form a cluster
    np.testing.assert_array_equal(np.unique(labels), [0, 1])


def test_must_and_cannot_links_together_with_an_outlier_side():
    # 20 joins the chain through 3, but cannot be with 0: the chain is split with 20 on 3's side
    labels = cluster(LINE, eps=1.5, min_samples=3, must_link=[[3, 6]], cannot_link=[[6, 0], [7, 1]])
    assert labels[6] == labels[3] and labels[6] != labels[0]
    assert labels[7] == -1  # a cannot-link with an outlier changes nothing
    # must-linked clusters merge unless a cannot-link forbids it
    two = line_dist([0, 1, 2, 10, 11, 12])
    assert len(set(cluster(two, 1.5, 2, must_link=[[0, 3]]).tolist())) == 1
    split = cluster(two, 1.5, 2, must_link=[[0, 3]], cannot_link=[[1, 4]])
    assert split[0] == split[3] and split[1] != split[4] and (split >= 0).all()


def test_contradictory_and_malformed_constraints_are_named():
    with pytest.raises(ValueError, match=r"cannot_link pair \(0, 2\) is joined by a chain of must_link"):
        cluster(LINE, 1.5, 3, must_link=[[0, 7], [7, 2]], cannot_link=[[0, 2]])
    with pytest.raises(ValueError, match="must_link must be an integer"):
        cluster(LINE, 1.5, 3, must_link=[0, 1, 2])
    with pytest.raises(ValueError, match=r"cannot_link has index 9 outside \[0, 9\)"):
        cluster(LINE, 1.5, 3, cannot_link=[[0, 9]])
    with pytest.raises(ValueError, match="eps must be a positive finite number, got 0"):
        cluster(LINE, 0, 3)
    with pytest.raises(ValueError, match="dist must be a numeric"):
        cluster(LINE[:3], 1.5, 3)
    with pytest.raises(ValueError, match="min_samples must be a positive int"):
        cluster(LINE, 1.5, 0)


def test_camera_proxies():
    of, p_cluster, p_camera = proxies(np.array([1, 1, 0, -1, 1, 0]), np.array([0, 1, 1, 0, 0, 1]))
    np.testing.assert_array_equal(p_cluster, [0, 1, 1])
    np.testing.assert_array_equal(p_camera, [1, 0, 1])
    np.testing.assert_array_equal(of, [1, 2, 0, -1, 1, 0])
    with pytest.raises(ValueError, match="cameras must be an integer array of shape"):
        proxies(np.array([0, 1]), np.array([0]))
