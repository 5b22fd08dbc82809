import math
from types import SimpleNamespace

import pytest
import torch

from reidloop.losses import (
    batch_hard_triplet,
    cross_entropy_ls,
    euclidean_dist,
    hard_triplet_from_masks,
    pair_masks,
    pair_triplet,
    reid_loss,
)

# Four points on a line: A at 0 and 2, B at 1 and 4.
LINE = torch.tensor([[0.0], [2.0], [1.0], [4.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])
# Per anchor (d_ap, d_an): 0 → (2, 1); 2 → (2, 1); 1 → (3, 1); 4 → (3, 2); so d_ap − d_an = 1, 1, 2, 1.


def test_euclidean_dist_matches_cdist():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    d, ref = euclidean_dist(x), torch.cdist(x, x)
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(d[off], ref[off], atol=1e-4)
    assert (d.diagonal() < 1e-2).all()  # sqrt of a rounding-level square, clamped at 1e-12


def test_batch_hard_triplet_hand_case():
    loss, n = batch_hard_triplet(LINE, LINE_LABELS, margin=0.5)
    assert n == 4
    assert loss.item() == pytest.approx((1.5 + 1.5 + 2.5 + 1.5) / 4, abs=1e-4)


def test_soft_margin_hand_case():
    loss, n = batch_hard_triplet(LINE, LINE_LABELS, margin=None)
    expected = (3 * math.log1p(math.exp(1.0)) + math.log1p(math.exp(2.0))) / 4
    assert n == 4
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_zero_loss_when_well_separated():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.0, 0.1]])
    loss, n = batch_hard_triplet(x, torch.tensor([3, 3, 7, 7]), margin=0.3)
    assert n == 4 and loss.item() == 0.0


def test_gradient_finite_at_identical_points():
    x = torch.ones(4, 8, requires_grad=True)
    loss, n = batch_hard_triplet(x, torch.tensor([0, 0, 1, 1]), margin=0.3)
    loss.backward()
    assert n == 4
    assert loss.item() == pytest.approx(0.3, abs=1e-4)
    assert torch.isfinite(x.grad).all()


def test_masks_only_count_anchors_with_positive_and_negative():
    dist = euclidean_dist(LINE)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = True  # only anchor 0 has a positive
    neg = ~torch.eye(4, dtype=torch.bool)
    neg[0, 1] = False
    loss, n = hard_triplet_from_masks(dist, pos, neg, margin=0.0)
    # anchor 0: d_ap = 2, d_an = min(1, 4) = 1
    assert n == 1 and loss.item() == pytest.approx(1.0, abs=1e-4)


def test_no_valid_anchor_gives_connected_zero():
    x = torch.randn(3, 4, requires_grad=True)
    loss, n = batch_hard_triplet(x, torch.tensor([0, 1, 2]), margin=0.3)
    loss.backward()
    assert n == 0 and loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_mask_and_margin_validation():
    dist = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="pos_mask"):
        hard_triplet_from_masks(dist, torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool), 0.3)
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet(LINE, LINE_LABELS, margin=-1.0)
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet(LINE, torch.tensor([0, 1]), margin=0.3)


def test_cross_entropy_label_smoothing_hand_case():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    # targets (1 - 0.2) * (0, 1) + 0.2 / 2 = (0.1, 0.9)
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    assert cross_entropy_ls(logits, torch.tensor([1]), 0.2).item() == pytest.approx(expected, abs=1e-5)
    assert cross_entropy_ls(logits, torch.tensor([1]), 0.0).item() == pytest.approx(-math.log(0.75), abs=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        cross_entropy_ls(logits, torch.tensor([1]), 1.0)


def test_pair_masks_transitive_closure():
    # 0~1, 1~2 ⇒ 0~2; 3~4; a single negative 2≠3 separates both groups.
    pos, neg = pair_masks(6, [(0, 1), (1, 2), (3, 4)], [(2, 3)])
    group_a, group_b = [0, 1, 2], [3, 4]
    for i in group_a:
        for j in group_a:
            assert pos[i, j] == (i != j)
        for j in group_b:
            assert neg[i, j] and neg[j, i] and not pos[i, j]
    assert pos[3, 4] and pos[4, 3]
    assert not pos.diagonal().any()
    assert not pos[5].any() and not neg[5].any()  # 5 was never annotated
    assert not neg[0, 1] and not neg[3, 4]


def test_pair_masks_reject_contradictions_and_bad_indices():
    with pytest.raises(ValueError, match="contradict"):
        pair_masks(3, [(0, 1), (1, 2)], [(0, 2)], on_conflict="raise")
    # default: a self-contradicting chain (0~1~2 but 0≠2) loses its internal links in both masks;
    # what it says about outsiders (2≠3, so the chain ≠ 3) and untouched pairs (4~5) is kept
    pos, neg = pair_masks(6, [(0, 1), (1, 2), (4, 5)], [(0, 2), (2, 3)])
    assert not (pos[:3, :3].any() or neg[:3, :3].any())
    assert neg[2, 3] and neg[0, 3] and neg[3, 1] and pos[4, 5] and not neg[4, 5]
    with pytest.raises(ValueError, match=r"pos_pairs: indices must lie in \[0, 3\)"):
        pair_masks(3, [(0, 3)], [])
    with pytest.raises(ValueError, match="P×2"):
        pair_masks(3, [(0, 1, 2)], [])


def test_pair_triplet_agrees_with_batch_hard_triplet():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    x = torch.randn(8, 16)
    same = labels[:, None] == labels[None, :]
    iu = torch.triu_indices(8, 8, offset=1).T
    all_pos = [tuple(p.tolist()) for p in iu if same[p[0], p[1]]]
    all_neg = [tuple(p.tolist()) for p in iu if not same[p[0], p[1]]]
    ref, n_ref = batch_hard_triplet(x, labels, margin=0.3)
    full, n_full = pair_triplet(x, all_pos, all_neg, margin=0.3)
    # Only a chain of positives per identity and one negative per pair of identities:
    # closure must recover the same masks.
    chain, sparse_neg = [(0, 1), (1, 2), (3, 4), (5, 6), (6, 7)], [(2, 3), (4, 5), (0, 7)]
    closed, n_closed = pair_triplet(x, torch.tensor(chain), torch.tensor(sparse_neg), margin=0.3)
    assert n_ref == n_full == n_closed == 8
    assert full.item() == pytest.approx(ref.item(), abs=1e-6)
    assert closed.item() == pytest.approx(ref.item(), abs=1e-6)


def test_pair_triplet_without_pairs_is_zero():
    x = torch.randn(4, 3, requires_grad=True)
    loss, n = pair_triplet(x, [], [], margin=0.3)
    loss.backward()
    assert n == 0 and loss.item() == 0.0


def test_reid_loss_total_is_ce_plus_triplet():
    torch.manual_seed(1)
    feats = torch.randn(4, 6, requires_grad=True)
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 2, 2])
    out = reid_loss(SimpleNamespace(features=feats, logits=logits), labels, margin=0.3, epsilon=0.1)
    assert set(out) == {"ce", "triplet", "total"}
    assert out["ce"].item() == pytest.approx(cross_entropy_ls(logits, labels, 0.1).item())
    assert out["triplet"].item() == pytest.approx(batch_hard_triplet(feats, labels, 0.3)[0].item())
    assert out["total"].item() == pytest.approx(out["ce"].item() + out["triplet"].item())
    out["total"].backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="no classifier"):
        reid_loss(SimpleNamespace(features=feats, logits=None), labels, margin=0.3, epsilon=0.1)
