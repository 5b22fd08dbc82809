"""DRAL maths pinned on small hand-computed matrices: Eq. 4 (similarity), Eq. 5 (κ-reciprocal),
Eq. 6–8 (transitions), Eq. 9 (reward), and the KISSME metric d."""
import numpy as np
import pytest

from reidloop.dral.metric import EuclideanMetric, KissmeMetric, fit_metric
from reidloop.dral.reward import query_reward, uncertainty_reward
from reidloop.dral.state import build_distance_matrix, kappa_reciprocal, similarity_from_distance
from reidloop.dral.transitions import apply_answer

# {q, g1, g2, g3}: index 0 is the query.
D4 = np.array([
    [0.0, 1.0, 2.0, 4.0],
    [1.0, 0.0, 2.0, 3.0],
    [2.0, 2.0, 0.0, 1.0],
    [4.0, 3.0, 1.0, 0.0],
])
# Eq. 4 by hand: 1 - D / 4, zero diagonal.
S4 = np.array([
    [0.00, 0.75, 0.50, 0.00],
    [0.75, 0.00, 0.50, 0.25],
    [0.50, 0.50, 0.00, 0.75],
    [0.00, 0.25, 0.75, 0.00],
])


# ---------------------------------------------------------------- Eq. 4
def test_similarity_eq4_by_hand():
    S = similarity_from_distance(D4)
    np.testing.assert_allclose(S, S4)
    np.testing.assert_array_equal(S, S.T)
    assert (np.diag(S) == 0).all()


def test_similarity_scale_invariant_and_zero_max_guard():
    np.testing.assert_allclose(similarity_from_distance(D4 * 37.5), S4)
    S0 = similarity_from_distance(np.zeros((3, 3)))
    np.testing.assert_array_equal(S0, np.ones((3, 3)) - np.eye(3))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 4)), "square"),
    (-D4, "negative"),
    (D4 + np.triu(np.ones((4, 4)), 1), "symmetric"),
    (np.where(np.eye(4) > 0, np.nan, D4), "NaN"),
])
def test_similarity_rejects_bad_distances(bad, match):
    with pytest.raises(ValueError, match=match):
        similarity_from_distance(bad)


def test_build_distance_matrix_euclidean():
    F = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    D = build_distance_matrix(F, EuclideanMetric())
    r18 = np.sqrt(18.0)
    np.testing.assert_allclose(D, [[0, 5, 1], [5, 0, r18], [1, r18, 0]], atol=1e-12)
    np.testing.assert_array_equal(D, D.T)
    assert (np.diag(D) == 0).all()


# ---------------------------------------------------------------- Eq. 5
def test_kappa_reciprocal_kappa1_by_hand():
    # N(0)={1}, N(1)={0}, N(2)={3}, N(3)={2} -> mutual pairs (0,1), (2,3)
    expected = np.array([
        [0.00, 0.75, 0.00, 0.00],
        [0.75, 0.00, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.75],
        [0.00, 0.00, 0.75, 0.00],
    ])
    np.testing.assert_array_equal(kappa_reciprocal(S4, 1), expected)


def test_kappa_reciprocal_kappa2_by_hand_with_tie_by_lower_index():
    # N(0)={1,2}, N(1)={0,2}, N(2)={3,0} (0 and 1 tie at .5: lower index wins), N(3)={2,1}
    # mutual: (0,1), (0,2), (2,3); (1,2) is dropped because 1 lost the tie in N(2)
    expected = np.array([
        [0.00, 0.75, 0.50, 0.00],
        [0.75, 0.00, 0.00, 0.00],
        [0.50, 0.00, 0.00, 0.75],
        [0.00, 0.00, 0.75, 0.00],
    ])
    out = kappa_reciprocal(S4, 2)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, out.T)
    assert (np.diag(out) == 0).all()


def test_kappa_reciprocal_full_kappa_keeps_everything_and_validates():
    np.testing.assert_array_equal(kappa_reciprocal(S4, 3), S4)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="kappa"):
            kappa_reciprocal(S4, bad)


def test_kappa_reciprocal_symmetric_on_random_matrix():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(31, 8))
    S = similarity_from_distance(build_distance_matrix(F, EuclideanMetric()))
    out = kappa_reciprocal(S, 15)
    np.testing.assert_array_equal(out, out.T)
    assert (np.diag(out) == 0).all()
    kept = out > 0
    assert 0 < kept.sum() < (S > 0).sum()
    assert (kept.sum(1) <= 15).all()


# ---------------------------------------------------------------- Eq. 6-8
S5 = np.array([
    [0.0, 0.8, 0.6, 0.4, 0.3],
    [0.8, 0.0, 0.7, 0.2, 0.5],
    [0.6, 0.7, 0.0, 0.9, 0.1],
    [0.4, 0.2, 0.9, 0.0, 0.6],
    [0.3, 0.5, 0.1, 0.6, 0.0],
])
NONE = np.zeros(4, dtype=bool)


def _check_rest_unchanged(new, old):
    np.testing.assert_array_equal(new[1:, 1:], old[1:, 1:])
    np.testing.assert_array_equal(new, new.T)
    assert (np.diag(new) == 0).all()


def test_positive_answer_eq6_eq7_text():
    S = apply_answer(S5, 1, +1, 0.4, NONE)
    # Sim(q,g1)=1; g_i <- (Sim(q,g_i) + Sim(g1,g_i)) / 2: (.6+.7)/2, (.4+.2)/2, (.3+.5)/2
    np.testing.assert_allclose(S[0], [0.0, 1.0, 0.65, 0.3, 0.4])
    _check_rest_unchanged(S, S5)
    # the printed formula (average with Sim(q,gk)=1) would give .8, .7, .65 instead
    assert not np.allclose(S[0, 2:], (S5[0, 2:] + 1.0) / 2)


def test_negative_answer_eq6_eq8_threshold():
    S = apply_answer(S5, 2, -1, 0.4, NONE)
    # Sim(q,g2)=0; Sim(g2,g1)=.7>.4: .8-.7; Sim(g2,g3)=.9>.4: max(.4-.9,0); Sim(g2,g4)=.1<=.4: unchanged
    np.testing.assert_allclose(S[0], [0.0, 0.1, 0.0, 0.0, 0.3])
    _check_rest_unchanged(S, S5)
    # strictly greater than thred: Sim(g2,g1)=.7 is not > .7
    S = apply_answer(S5, 2, -1, 0.7, NONE)
    np.testing.assert_allclose(S[0], [0.0, 0.8, 0.0, 0.0, 0.3])


def test_answered_candidates_keep_their_value():
    S1 = apply_answer(S5, 1, +1, 0.4, NONE)
    S2 = apply_answer(S1, 2, -1, 0.4, np.array([True, False, False, False]))
    # g1 answered +1 keeps 1 although Sim(g2,g1)=.7>thred; g3: max(.3-.9,0); g4 unchanged
    np.testing.assert_allclose(S2[0], [0.0, 1.0, 0.0, 0.0, 0.4])
    S3 = apply_answer(S2, 4, +1, 0.4, np.array([True, True, False, False]))
    # only g3 is re-scored: (0 + Sim(g4,g3)=.6)/2; g2 keeps its 0
    np.testing.assert_allclose(S3[0], [0.0, 1.0, 0.0, 0.3, 1.0])
    np.testing.assert_array_equal(S3, S3.T)


def test_apply_answer_returns_new_array_and_validates():
    before = S5.copy()
    out = apply_answer(S5, 1, -1, 0.4, NONE)
    assert out is not S5
    np.testing.assert_array_equal(S5, before)
    with pytest.raises(ValueError, match="already been answered"):
        apply_answer(S5, 1, 1, 0.4, np.array([True, False, False, False]))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        apply_answer(S5, 0, 1, 0.4, NONE)
    with pytest.raises(ValueError, match="answer y"):
        apply_answer(S5, 1, 0, 0.4, NONE)
    with pytest.raises(ValueError, match="answered_mask"):
        apply_answer(S5, 1, 1, 0.4, np.zeros(5, dtype=bool))


# ---------------------------------------------------------------- Eq. 9
# normalised distances of D4: D4 / 4
#   q-g1 .25, q-g2 .5, q-g3 1, g1-g2 .5, g1-g3 .75, g2-g3 .25
@pytest.mark.parametrize("k, y, pos, neg, expected", [
    (1, +1, [], [], 0.0),      # [.2 + (.25 - 1.0)]+ : no negatives -> min over Xn = 1
    (1, -1, [], [], 0.95),     # .2 - (.25 - 1.0)
    (3, +1, [1], [2], 0.95),   # max(q-g3 1, g1-g3 .75)=1, min(g2-g3)=.25: .2 + .75
    (3, -1, [1], [2], 0.0),    # [.2 - .75]+
    (2, +1, [], [3], 0.45),    # .2 + (.5 - .25)
    (2, -1, [1], [], 0.7),     # .2 - (max(.5, .5) - 1)
])
def test_reward_eq9_by_hand(k, y, pos, neg, expected):
    assert query_reward(D4, k, y, pos, neg, margin=0.2) == pytest.approx(expected)
    assert query_reward(D4 * 1000.0, k, y, pos, neg, margin=0.2) == pytest.approx(expected)


def test_uncertainty_reward_direct_and_validation():
    assert uncertainty_reward([0.1, 0.3], [0.6, 0.2], +1, 0.2) == pytest.approx(0.3)
    assert uncertainty_reward([0.1, 0.3], [0.6, 0.2], -1, 0.2) == pytest.approx(0.1)
    assert uncertainty_reward([0.4], [], -1, 0.2) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="query itself"):
        uncertainty_reward([], [0.5], 1, 0.2)
    with pytest.raises(ValueError, match="unanswered candidate"):
        query_reward(D4, 1, 1, [1], [], 0.2)
    with pytest.raises(ValueError, match="unanswered candidate"):
        query_reward(D4, 0, 1, [], [], 0.2)


# ---------------------------------------------------------------- KISSME
def _gaussian_classes(seed=0, n_cls=20, per_cls=10, d=6):
    """Dim 0 is per-sample noise of std 10 (huge even within a class); dims 1.. carry the identity."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_cls, d))
    means[:, 0] = 0.0
    labels = np.repeat(np.arange(n_cls), per_cls)
    X = means[labels] + 0.3 * rng.normal(size=(len(labels), d))
    X[:, 0] = 10.0 * rng.normal(size=len(labels))
    return X, labels


def _pairs(labels, idx, rng, n):
    a, b = rng.choice(idx, size=(2, 20 * n))
    keep = a != b
    a, b = a[keep], b[keep]
    same = labels[a] == labels[b]
    pos = np.stack([a[same], b[same]], 1)[:n]
    neg = np.stack([a[~same], b[~same]], 1)[:n]
    return pos, neg


def _auc(metric, X, pos, neg):
    """P(d(pos pair) < d(neg pair)): the ROC AUC of the distance as a same/different score."""
    d_all = metric.pairwise(X, X)
    d_pos, d_neg = d_all[pos[:, 0], pos[:, 1]], d_all[neg[:, 0], neg[:, 1]]
    return (d_pos[:, None] < d_neg[None, :]).mean()


def test_kissme_beats_euclidean_when_one_dimension_is_noise():
    X, labels = _gaussian_classes()
    rng = np.random.default_rng(1)
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    pos_tr, neg_tr = _pairs(labels, train, rng, 60)
    pos_te, neg_te = _pairs(labels, test, rng, 60)
    kiss = KissmeMetric.fit(X, pos_tr, neg_tr)
    auc_kiss, auc_euc = _auc(kiss, X, pos_te, neg_te), _auc(EuclideanMetric(), X, pos_te, neg_te)
    assert auc_kiss > 0.9
    assert auc_euc < 0.75
    assert auc_kiss > auc_euc + 0.2


def test_kissme_is_psd_and_matches_its_formula():
    X, labels = _gaussian_classes()
    pos, neg = _pairs(labels, np.arange(200), np.random.default_rng(2), 40)
    m = KissmeMetric.fit(X, pos, neg)
    assert np.linalg.eigvalsh(m.matrix).min() >= -1e-10
    np.testing.assert_allclose(m.matrix, m.matrix.T)
    A = m.projection @ m.matrix @ m.projection.T
    diff = X[3] - X[17]
    np.testing.assert_allclose(m.pairwise(X[3:4], X[17:18])[0, 0], np.sqrt(diff @ A @ diff), rtol=1e-8)
    D = m.pairwise(X[:10], X[:10])
    assert (D >= 0).all()
    np.testing.assert_allclose(np.diag(D), 0.0, atol=1e-6)


def test_kissme_pca_subspace_with_high_dimensional_features():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2048))
    pos = np.stack([np.arange(0, 10), np.arange(10, 20)], 1)
    neg = np.stack([np.arange(20, 32), np.arange(28, 40)], 1)
    m = KissmeMetric.fit(X, pos, neg)
    assert m.projection.shape == (2048, 10)  # min(d, 64, n-1, |S|=10, |D|=12)
    np.testing.assert_allclose(m.projection.T @ m.projection, np.eye(10), atol=1e-10)
    assert np.isfinite(m.pairwise(X, X)).all()


def test_fit_metric_falls_back_to_euclidean():
    X, labels = _gaussian_classes()
    pos, neg = _pairs(labels, np.arange(200), np.random.default_rng(4), 30)
    assert isinstance(fit_metric("kissme", X, pos[:3], neg, min_pairs=10), EuclideanMetric)
    assert isinstance(fit_metric("kissme", X, pos, np.zeros((0, 2), int), min_pairs=10), EuclideanMetric)
    assert isinstance(fit_metric("euclidean", X, pos, neg), EuclideanMetric)
    assert isinstance(fit_metric("kissme", X, pos, neg, min_pairs=10), KissmeMetric)
    # degenerate: the "dissimilar" pairs are identical points, so no direction is discriminative
    same = np.stack([np.arange(30), np.arange(30)], 1)
    assert isinstance(fit_metric("kissme", X, neg, same, min_pairs=10), EuclideanMetric)
    with pytest.raises(ValueError, match="metric kind"):
        fit_metric("cosine", X, pos, neg)


def test_kissme_rejects_bad_pairs():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="pos_pairs has indices outside"):
        KissmeMetric.fit(X, np.array([[0, 5]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="neg_pairs must be an integer"):
        KissmeMetric.fit(X, np.array([[0, 1]]), np.array([[0.0, 1.0]]))
