"""CNN fine-tuning on human-verified pairs (DRAL §3.3), or on every label (UpperBound).

A batch is ``queries_per_batch`` queries with all their answered candidates.
The triplet loss (Eq. 2, margin ``FinetuneConfig.margin``) runs on the pairs
known inside the batch, positives closed transitively (a~b, b~c ⇒ a~c) by
:func:`reidloop.losses.pair_masks`. With ``cross_entropy`` on, chains of "same"
answers across the whole log form pseudo-identities (connected components of
two or more images) and a fresh classifier over them adds the CE term of Eq. 3;
its head learns ``head_lr_factor`` times faster than the pre-trained body, as
fast-reid does for new heads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from ..config import FinetuneConfig
from ..data.images import ReidImageDataset
from ..data.records import ImageRecord
from ..data.transforms import build_transforms
from ..losses import cross_entropy_ls, pair_triplet
from ..engine.precision import Precision

HEAD_LR_FACTOR = 100.0


@dataclass
class FinetuneStats:
    batches: int
    images: int
    triplet: float
    ce: float
    seconds: float


def components(n: int, pos_pairs: np.ndarray) -> np.ndarray:
    """Union-find over "same" pairs: a component label per item, −1 for items in no pair."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in np.asarray(pos_pairs, dtype=np.int64).reshape(-1, 2):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    labels = np.full(n, -1, dtype=np.int64)
    keep = sizes[roots] >= 2
    _, labels[keep] = np.unique(roots[keep], return_inverse=True)
    return labels


def pair_batches(queries: np.ndarray, candidates: np.ndarray, answers: np.ndarray, per_batch: int,
                 rng: np.random.Generator):
    """Yield (pool indices, local pos pairs, local neg pairs), ``per_batch`` queries at a time."""
    order = np.unique(queries)
    rng.shuffle(order)
    by_query = {q: np.flatnonzero(queries == q) for q in order}
    for start in range(0, len(order), per_batch):
        rows = np.concatenate([by_query[q] for q in order[start:start + per_batch]])
        items, inverse = np.unique(np.concatenate([queries[rows], candidates[rows]]), return_inverse=True)
        local = inverse.reshape(2, -1).T
        yes = answers[rows] > 0
        yield items, local[yes], local[~yes]


def label_batches(labels: np.ndarray, per_batch: int, images_per_id: int, rng: np.random.Generator):
    """UpperBound batches: ``per_batch`` identities × ``images_per_id`` images, all pairs labelled."""
    ids = np.unique(labels)
    rng.shuffle(ids)
    for start in range(0, len(ids), per_batch):
        items = np.concatenate([
            rng.choice(np.flatnonzero(labels == i), size=min(images_per_id, int((labels == i).sum())),
                       replace=False) for i in ids[start:start + per_batch]])
        lab = labels[items]
        same = lab[:, None] == lab[None, :]
        iu = np.triu_indices(len(items), 1)
        pairs = np.stack(iu, 1)
        yield items, pairs[same[iu]], pairs[~same[iu]]


def finetune(model: torch.nn.Module, pool: Sequence[ImageRecord], cfg: FinetuneConfig, *, height: int,
             width: int, precision: Precision, mode: Literal["pairs", "full"], seed: int,
             queries: np.ndarray | None = None, candidates: np.ndarray | None = None,
             answers: np.ndarray | None = None, pool_labels: np.ndarray | None = None) -> FinetuneStats:
    """Fine-tune ``model`` in place for cfg.epochs on the answered pairs (mode "pairs") or all labels ("full")."""
    n = len(pool)
    if mode == "pairs":
        if queries is None or candidates is None or answers is None:
            raise ValueError("finetune(mode='pairs') needs queries, candidates and answers")
        queries, candidates, answers = (np.asarray(a, dtype=np.int64) for a in (queries, candidates, answers))
        if len(queries) == 0:
            return FinetuneStats(0, 0, 0.0, 0.0, 0.0)
        ce_labels = components(n, np.stack([queries, candidates], 1)[answers > 0])
    elif mode == "full":
        if pool_labels is None:
            raise ValueError("finetune(mode='full') needs pool_labels")
        _, ce_labels = np.unique(np.asarray(pool_labels), return_inverse=True)
    else:
        raise ValueError(f"finetune mode {mode!r} is not 'pairs' or 'full'")

    dataset = ReidImageDataset(list(pool), build_transforms(height, width, train=True))
    model = precision.prepare(model)
    n_classes = int(ce_labels.max()) + 1 if cfg.cross_entropy and (ce_labels >= 0).any() else 0
    model.reset_classifier(n_classes)
    model = precision.prepare(model)
    params = [{"params": [p for name, p in model.named_parameters()
                          if p.requires_grad and not name.startswith("classifier.")], "lr": cfg.lr}]
    if model.classifier is not None:
        params.append({"params": list(model.classifier.parameters()), "lr": cfg.lr * HEAD_LR_FACTOR})
    optimizer = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    stats = FinetuneStats(0, 0, 0.0, 0.0, 0.0)
    start = time.perf_counter()
    for _epoch in range(cfg.epochs):
        batches = (pair_batches(queries, candidates, answers, cfg.queries_per_batch, rng) if mode == "pairs"
                   else label_batches(ce_labels, cfg.queries_per_batch, 4, rng))
        for items, pos, neg in batches:
            if len(pos) == 0 or len(neg) == 0:
                continue  # no triplet can be formed in this batch
            x = precision.batch(torch.stack([dataset[int(i)][0] for i in items]))
            with precision.autocast():
                out = model(x)
            feats = out.features.float()
            tri, _ = pair_triplet(feats, pos, neg, cfg.margin)
            loss = tri
            ce_val = 0.0
            if model.classifier is not None:
                lab = torch.as_tensor(ce_labels[items], device=feats.device)
                keep = lab >= 0
                if keep.any():
                    ce = cross_entropy_ls(out.logits.float()[keep], lab[keep], 0.1)
                    loss = loss + ce
                    ce_val = float(ce.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats.batches += 1
            stats.images += len(items)
            stats.triplet += float(tri.detach())
            stats.ce += ce_val
    model.reset_classifier(0)
    model.eval()
    stats.seconds = time.perf_counter() - start
    if stats.batches:
        stats.triplet /= stats.batches
        stats.ce /= stats.batches
    return stats
