"""Re-ID losses of DRAL Sec. 3.1 / 3.3.

* ``cross_entropy_ls`` — Eq. 1 with label smoothing (Bag of Tricks);
* ``hard_triplet_from_masks`` — the batch-hard triplet loss of Eq. 2 (hardest
  positive and hardest negative per anchor) for any positive/negative masks;
* ``batch_hard_triplet`` — Eq. 2 with masks from identity labels (pre-training);
* ``pair_triplet`` — Eq. 2 with masks from human-verified pairs (DRAL fine-tuning,
  Sec. 3.3), positives closed transitively within the batch;
* ``reid_loss`` — Eq. 3, L_total = L_cross + L_tri.

Distances are computed in float32 (also under autocast) with a clamped sqrt, so
gradients stay finite even for identical points.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from .unionfind import UnionFind

if TYPE_CHECKING:
    from .models.reid_net import ReidOutput

Pairs = torch.Tensor | Sequence[tuple[int, int]]


def euclidean_dist(features: torch.Tensor) -> torch.Tensor:
    """N×N Euclidean distances between the rows of ``features`` (float32, sqrt clamped at 1e-12)."""
    if features.dim() != 2:
        raise ValueError(f"features: expected an N×D tensor, got shape {tuple(features.shape)}")
    x = features.float()
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return d2.clamp(min=1e-12).sqrt()


def cross_entropy_ls(logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Eq. 1 with label smoothing: targets (1 − ε)·onehot + ε/K, averaged over the batch."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon: {epsilon!r} must be in [0, 1)")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} / labels {tuple(labels.shape)}: expected B×K and B")
    return F.cross_entropy(logits.float(), labels.to(logits.device, torch.long), label_smoothing=epsilon)


def hard_triplet_from_masks(dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor,
                            margin: Optional[float]) -> tuple[torch.Tensor, int]:
    """Batch-hard triplet loss, Eq. 2: mean over anchors of [max_p d_ap − min_n d_an + m]_+.

    Only anchors with at least one positive and one negative count. ``margin=None``
    uses the soft margin softplus(d_ap − d_an). Returns ``(loss, num_valid_anchors)``;
    with no valid anchor the loss is a graph-connected zero.
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist: expected a square N×N tensor, got shape {tuple(dist.shape)}")
    for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if mask.shape != dist.shape or mask.dtype != torch.bool:
            raise ValueError(f"{name}: expected a bool tensor of shape {tuple(dist.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    if margin is not None and margin < 0:
        raise ValueError(f"margin: {margin!r} must be >= 0 (or None for the soft margin)")
    valid = pos_mask.any(1) & neg_mask.any(1)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return dist.sum() * 0.0, 0
    d, pos, neg = dist[valid], pos_mask[valid], neg_mask[valid]
    d_ap = torch.where(pos, d, torch.full_like(d, float("-inf"))).amax(1)
    d_an = torch.where(neg, d, torch.full_like(d, float("inf"))).amin(1)
    gap = d_ap - d_an
    per_anchor = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return per_anchor.mean(), num_valid


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor,
                       margin: Optional[float]) -> tuple[torch.Tensor, int]:
    """Eq. 2 over a labelled batch: positives share the label (self excluded), negatives do not."""
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)}: expected one label per row of features "
                         f"{tuple(features.shape)}")
    labels = labels.to(features.device)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=features.device)
    return hard_triplet_from_masks(euclidean_dist(features), same & ~eye, ~same, margin)


def _index_pairs(pairs: Pairs, n: int, name: str) -> torch.Tensor:
    """``pairs`` as a P×2 long tensor, every index checked to lie in [0, n)."""
    idx = torch.as_tensor(pairs, dtype=torch.long)
    if idx.numel() == 0:
        idx = idx.reshape(0, 2)
    if idx.dim() != 2 or idx.shape[1] != 2:
        raise ValueError(f"{name}: expected P×2 index pairs, got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{name}: indices must lie in [0, {n}), got range "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return idx


def _pair_matrix(idx: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Symmetric N×N bool adjacency from checked index pairs (i, j)."""
    idx = idx.to(device)
    adj = torch.zeros(n, n, dtype=torch.bool, device=device)
    adj[idx[:, 0], idx[:, 1]] = True
    return adj | adj.T


def _same_group(pos: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Reflexive-transitive closure of the "same" pairs: N×N, true within each union-find group."""
    roots = torch.as_tensor(UnionFind(n, pos.tolist()).roots(), device=device)
    return roots[:, None] == roots[None, :]


def pair_masks(n: int, pos_pairs: Pairs, neg_pairs: Pairs, device: torch.device | str = "cpu",
               on_conflict: str = "drop") -> tuple[torch.Tensor, torch.Tensor]:
    """Positive/negative N×N masks from verified pairs (DRAL Sec. 3.3).

    Positives are closed transitively (a~b, b~c ⇒ a~c); a negative between two
    members extends to their whole groups. Self pairs are never positives.
    Contradictory annotations (real annotators err: a pair linked as the same
    person and also marked different) are dropped from both masks with
    ``on_conflict="drop"`` (the default: noisy answers must not stop a run) or
    raise ValueError with ``on_conflict="raise"``.
    """
    if on_conflict not in ("drop", "raise"):
        raise ValueError(f"on_conflict: {on_conflict!r} is not 'drop' or 'raise'")
    device = torch.device(device)
    pos_idx, neg_idx = _index_pairs(pos_pairs, n, "pos_pairs"), _index_pairs(neg_pairs, n, "neg_pairs")
    reach = _same_group(pos_idx, n, device)
    neg_adj = _pair_matrix(neg_idx, n, device).float()
    r = reach.float()
    neg = (r @ neg_adj @ r) > 0
    conflict = neg & reach
    if conflict.any():
        if on_conflict == "raise":
            i, j = (int(v) for v in conflict.nonzero()[0])
            raise ValueError(f"neg_pairs contradict pos_pairs: samples {i} and {j} are linked as the same "
                             f"person but also marked different ({int(conflict.sum())} such entries)")
        reach, neg = reach & ~conflict, neg & ~conflict
    return reach & ~torch.eye(n, dtype=torch.bool, device=device), neg


def pair_triplet(features: torch.Tensor, pos_pairs: Pairs, neg_pairs: Pairs,
                 margin: Optional[float]) -> tuple[torch.Tensor, int]:
    """Eq. 2 on a batch where only human-verified pairs are known (see ``pair_masks``)."""
    pos, neg = pair_masks(features.shape[0], pos_pairs, neg_pairs, features.device)
    return hard_triplet_from_masks(euclidean_dist(features), pos, neg, margin)


def reid_loss(output: "ReidOutput", labels: torch.Tensor, margin: Optional[float],
              epsilon: float) -> dict[str, torch.Tensor]:
    """Eq. 3: ``{"ce": L_cross, "triplet": L_tri, "total": L_cross + L_tri}`` for a training-mode output."""
    if output.logits is None:
        raise ValueError("reid_loss needs logits, but the model has no classifier (num_classes=0); "
                         "use pair_triplet or batch_hard_triplet on output.features instead")
    ce = cross_entropy_ls(output.logits, labels, epsilon)
    triplet, _ = batch_hard_triplet(output.features, labels, margin)
    return {"ce": ce, "triplet": triplet, "total": ce + triplet}
