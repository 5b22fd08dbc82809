"""CNN fine-tuning on human-verified pairs (DRAL §3.3), or on every label (UpperBound).

A batch is ``queries_per_batch`` queries with all their answered candidates; with
``FinetuneConfig.pairs = "settled"`` (the default) also every image known to show a
query's person, labelled with every pair among the batch's images that the whole
log settles by transitivity (:class:`reidloop.pair_knowledge.PairKnowledge`).
The triplet loss (Eq. 2, margin ``FinetuneConfig.margin``) runs on the pairs
known inside the batch, positives closed transitively (a~b, b~c ⇒ a~c) by
:func:`reidloop.losses.pair_masks`. With ``cross_entropy`` on, chains of "same"
answers across the whole log form pseudo-identities (connected components of
two or more images) and a fresh classifier over them adds the CE term of Eq. 3;
its head learns ``HEAD_LR_FACTOR`` (10) times faster than the pre-trained body, as
fast-reid does for new heads.

The pieces (:func:`finetune_data`, :func:`epoch_batches`, :func:`prepare_finetune`,
:func:`finetune_step`) are shared with the Ray Train loop of ``services/ray_train.py``; every
epoch is seeded by (seed, epoch) only, so a run resumed from an epoch checkpoint, or sharded over
DDP workers, trains on the same batches as :func:`finetune` in one process.
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
from ..engine.precision import Precision, checked_precision
from ..pair_knowledge import PairKnowledge
from ..progress import bar
from ..unionfind import UnionFind

HEAD_LR_FACTOR = 10.0


@dataclass
class FinetuneStats:
    batches: int
    images: int
    triplet: float
    ce: float
    seconds: float

    def add(self, images: int, triplet: float, ce: float) -> None:
        self.batches += 1
        self.images += images
        self.triplet += triplet
        self.ce += ce

    def finish(self, seconds: float) -> "FinetuneStats":
        """Sums → per-batch means, and the wall time."""
        self.seconds = seconds
        if self.batches:
            self.triplet /= self.batches
            self.ce /= self.batches
        return self


@dataclass
class FinetuneData:
    """What a fine-tune trains on: the answered pairs (or, for "full", every label) and CE pseudo-labels."""

    mode: Literal["pairs", "full"]
    queries: np.ndarray | None
    candidates: np.ndarray | None
    answers: np.ndarray | None
    ce_labels: np.ndarray  # per pool image: pseudo-identity of Eq. 3, -1 for none
    n_classes: int  # CE head size; 0: no CE term
    knowledge: PairKnowledge | None = None  # FinetuneConfig.pairs == "settled": what the answers settle
    truth: np.ndarray | None = None  # per pool image: true identity, labelling every pair (learners' UpperBound)


def components(n: int, pos_pairs: np.ndarray) -> np.ndarray:
    """Union-find over "same" pairs: a component label per item, −1 for items in no pair."""
    roots = UnionFind(n, np.asarray(pos_pairs, dtype=np.int64).reshape(-1, 2).tolist()).roots()
    sizes = np.bincount(roots, minlength=n)
    labels = np.full(n, -1, dtype=np.int64)
    keep = sizes[roots] >= 2
    _, labels[keep] = np.unique(roots[keep], return_inverse=True)
    return labels


def pair_batches(queries: np.ndarray, candidates: np.ndarray, answers: np.ndarray, per_batch: int,
                 rng: np.random.Generator, knowledge: PairKnowledge | None = None,
                 truth: np.ndarray | None = None):
    """Yield (pool indices, local pos pairs, local neg pairs), ``per_batch`` queries at a time.

    A batch holds its queries and their answered candidates, labelled by the answers. With
    ``knowledge`` it also holds every image known to show a query's person, and is labelled with
    every pair among its images that the answers settle. With ``truth`` (the learners' UpperBound)
    every pair among its images is labelled from the true identities.
    """
    order = np.unique(queries)
    rng.shuffle(order)
    by_query = {q: np.flatnonzero(queries == q) for q in order}
    if knowledge is not None:
        roots = knowledge.roots()
    for start in range(0, len(order), per_batch):
        chosen = order[start:start + per_batch]
        rows = np.concatenate([by_query[q] for q in chosen])
        if truth is not None:
            items = np.unique(np.concatenate([queries[rows], candidates[rows]]))
            yield (items, *labelled_pairs(truth[items]))
            continue
        if knowledge is not None:
            same = np.flatnonzero(np.isin(roots, roots[chosen]))
            items = np.unique(np.concatenate([queries[rows], candidates[rows], same]))
            pos, neg = knowledge.settled_pairs(items)
            yield items, pos, neg
            continue
        items, inverse = np.unique(np.concatenate([queries[rows], candidates[rows]]), return_inverse=True)
        local = inverse.reshape(2, -1).T
        yes = answers[rows] > 0
        yield items, local[yes], local[~yes]


def label_batches(labels: np.ndarray, per_batch: int, images_per_id: int, n_batches: int,
                  rng: np.random.Generator):
    """UpperBound batches: ``per_batch`` identities × ``images_per_id`` images, every pair labelled.

    ``n_batches`` per epoch: as many as the pair batches of a loop in which every pool image has been
    a query, so the UpperBound gets the same optimisation budget as the active learners.
    """
    ids = np.unique(labels)
    members = {i: np.flatnonzero(labels == i) for i in ids}
    order = np.concatenate([rng.permutation(ids) for _ in range(-(-n_batches * per_batch // len(ids)))])
    for b in range(n_batches):
        chosen = order[b * per_batch:(b + 1) * per_batch]
        items = np.concatenate([rng.choice(members[i], size=min(images_per_id, len(members[i])), replace=False)
                                for i in chosen])
        yield (items, *labelled_pairs(labels[items]))


def labelled_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos, neg) local index pairs (i < j) of every pair of a batch, from its items' identities."""
    iu = np.triu_indices(len(labels), 1)
    pairs = np.stack(iu, 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return pairs[same], pairs[~same]


def upperbound_pairs(features: np.ndarray, labels: np.ndarray, queries: np.ndarray, kmax: int,
                     distance=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The learners' UpperBound training pairs: (queries, candidates, answers) from the true ``labels``.

    Each query is paired with its ``kmax`` nearest other pool images (``distance(a, b)`` → pairwise
    matrix; Euclidean when None), as a learner spending all Kmax questions on it would be, and with
    every other image of its person, as the learners' settled-pairs batches hold them. Fine-tuned with
    ``truth=labels`` so every pair in a batch is labelled: the learners' batch shape and step count,
    with perfect and complete answers.
    """
    from ..metrics.distance import pairwise_distance

    queries = np.asarray(queries, dtype=np.int64)
    if not len(queries):
        return (np.empty(0, dtype=np.int64),) * 3
    D = (distance or pairwise_distance)(features[queries], features)
    D[np.arange(len(queries)), queries] = np.inf
    k = min(kmax, len(features) - 1)
    near = np.argsort(D, axis=1, kind="stable")[:, :k]
    q_out, c_out = [], []
    for q, cands in zip(queries.tolist(), near):
        same = np.flatnonzero(labels == labels[q])
        cs = np.unique(np.concatenate([cands, same[same != q]]))
        q_out.append(np.full(len(cs), q, dtype=np.int64))
        c_out.append(cs.astype(np.int64))
    qs, cs = np.concatenate(q_out), np.concatenate(c_out)
    return qs, cs, np.where(labels[qs] == labels[cs], 1, -1).astype(np.int64)


def finetune_data(n: int, cfg: FinetuneConfig, mode: Literal["pairs", "full"], *,
                  queries: np.ndarray | None = None, candidates: np.ndarray | None = None,
                  answers: np.ndarray | None = None, pool_labels: np.ndarray | None = None,
                  truth: np.ndarray | None = None) -> FinetuneData | None:
    """Validate the inputs of a fine-tune over a pool of ``n`` images; None when there is nothing to train on.

    ``truth`` (mode "pairs" only): true identities of the pool, labelling every pair of each batch (the
    learners' UpperBound, :func:`upperbound_pairs`).
    """
    if mode == "pairs":
        if queries is None or candidates is None or answers is None:
            raise ValueError("finetune(mode='pairs') needs queries, candidates and answers")
        queries, candidates, answers = (np.asarray(a, dtype=np.int64) for a in (queries, candidates, answers))
        if len(queries) == 0:
            return None
        ce_labels = components(n, np.stack([queries, candidates], 1)[answers > 0])
        knowledge = PairKnowledge(n, zip(queries.tolist(), candidates.tolist(), answers.tolist()), strict=False) \
            if cfg.pairs == "settled" and truth is None else None
        if truth is not None:
            truth = np.asarray(truth)
            if len(truth) != n:
                raise ValueError(f"finetune truth: {len(truth)} labels for a pool of {n} images")
    elif mode == "full":
        if pool_labels is None:
            raise ValueError("finetune(mode='full') needs pool_labels")
        _, ce_labels = np.unique(np.asarray(pool_labels), return_inverse=True)
        knowledge = None
    else:
        raise ValueError(f"finetune mode {mode!r} is not 'pairs' or 'full'")
    n_classes = int(ce_labels.max()) + 1 if cfg.cross_entropy and (ce_labels >= 0).any() else 0
    return FinetuneData(mode, queries, candidates, answers, ce_labels, n_classes, knowledge,
                        truth if mode == "pairs" else None)


def epoch_batches(data: FinetuneData, cfg: FinetuneConfig, seed: int, epoch: int) -> list[tuple]:
    """The epoch's batches in order, those without a triplet (no positive or no negative pair) left out.

    Seeded by (seed, epoch) alone, so a run resumed at any epoch — or sharded over DDP workers, each
    taking every world_size-th batch — sees the same batches as an uninterrupted single-process run.
    """
    rng = np.random.default_rng([seed, epoch])
    if data.mode == "pairs":
        batches = pair_batches(data.queries, data.candidates, data.answers, cfg.queries_per_batch, rng,
                               knowledge=data.knowledge, truth=data.truth)
    else:  # as many batches as a loop whose every pool image was a query
        n_batches = -(-len(data.ce_labels) // cfg.queries_per_batch)
        batches = label_batches(data.ce_labels, cfg.queries_per_batch, 4, n_batches, rng)
    return [b for b in batches if len(b[1]) and len(b[2])]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Torch seed of one worker's epoch (augmentations): resumable at epoch granularity."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def prepare_finetune(model: torch.nn.Module, data: FinetuneData, cfg: FinetuneConfig, precision: Precision,
                     seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Fresh CE head (seeded), model on the device in train mode, and Adam with a faster head."""
    torch.manual_seed(seed)
    model.reset_classifier(data.n_classes)
    model = precision.prepare(model)
    params = [{"params": [p for name, p in model.named_parameters()
                          if p.requires_grad and not name.startswith("classifier.")], "lr": cfg.lr,
               "base_lr": cfg.lr, "body": True}]
    if model.classifier is not None:
        params.append({"params": list(model.classifier.parameters()), "lr": cfg.lr * HEAD_LR_FACTOR,
                       "base_lr": cfg.lr * HEAD_LR_FACTOR, "body": False})
    model.train()
    return model, torch.optim.Adam(params, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: FinetuneConfig, body: bool, has_head: bool = True) -> float:
    """The lr of optimiser step ``step`` (0-based) of one fine-tune, as a multiple of the base lr.

    With a fresh CE head (``has_head``) the body is frozen (0) for the first ``freeze_steps`` steps
    while the head learns alone, as fast-reid does for new heads; each part then warms up linearly
    from 0.1 over ``warmup_steps`` steps of its own.
    """
    start = cfg.freeze_steps if body and has_head else 0
    if step < start:
        return 0.0
    t = step - start
    if t >= cfg.warmup_steps:
        return 1.0
    return 0.1 + 0.9 * t / cfg.warmup_steps


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: FinetuneConfig) -> None:
    """Apply :func:`lr_factor` to the param groups built by :func:`prepare_finetune`."""
    has_head = any(not g["body"] for g in optimizer.param_groups)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * lr_factor(step, cfg, g["body"], has_head)


def finetune_step(model: torch.nn.Module, dataset: ReidImageDataset, batch: tuple, data: FinetuneData,
                  cfg: FinetuneConfig, precision: Precision, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None = None, step: int = 0) -> tuple[float, float]:
    """One update on a batch (items, pos, neg): triplet (Eq. 2) + CE over pseudo-identities (Eq. 3).

    ``model`` may be DDP-wrapped; ``step`` is this update's index within the fine-tune (it sets the
    lr, see :func:`lr_factor`); returns (triplet, ce) loss values.
    """
    set_lr(optimizer, step, cfg)
    items, pos, neg = batch
    x = precision.batch(torch.stack([dataset[int(i)][0] for i in items]))
    with precision.autocast():
        out = model(x)
    feats = out.features.float()
    tri, _ = pair_triplet(feats, pos, neg, cfg.margin)
    loss = tri
    ce_val = 0.0
    if data.n_classes:
        lab = torch.as_tensor(data.ce_labels[items], device=feats.device)
        keep = lab >= 0
        if keep.any():
            ce = cross_entropy_ls(out.logits.float()[keep], lab[keep], 0.1)
            loss = loss + ce
            ce_val = float(ce.detach())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(tri.detach()), ce_val


def finetune(model: torch.nn.Module, pool: Sequence[ImageRecord], cfg: FinetuneConfig, *, height: int,
             width: int, precision: Precision, mode: Literal["pairs", "full"], seed: int,
             queries: np.ndarray | None = None, candidates: np.ndarray | None = None,
             answers: np.ndarray | None = None, pool_labels: np.ndarray | None = None,
             truth: np.ndarray | None = None, progress: bool = False, desc: str = "fine-tune") -> FinetuneStats:
    """Fine-tune ``model`` in place for cfg.epochs on the answered pairs (mode "pairs") or all labels ("full").

    ``progress``: a bar over the optimiser steps (:func:`reidloop.progress.bar`), its total growing by each
    epoch's batches as the epoch starts."""
    data = finetune_data(len(pool), cfg, mode, queries=queries, candidates=candidates, answers=answers,
                         pool_labels=pool_labels, truth=truth)
    if data is None:
        return FinetuneStats(0, 0, 0.0, 0.0, 0.0)
    dataset = ReidImageDataset(list(pool), build_transforms(height, width, train=True))
    precision = checked_precision(precision, model, height, width)
    model, optimizer = prepare_finetune(model, data, cfg, precision, seed)
    scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None
    stats = FinetuneStats(0, 0, 0.0, 0.0, 0.0)
    start = time.perf_counter()
    shown = None
    try:
        for epoch in range(cfg.epochs):
            torch.manual_seed(epoch_seed(seed, epoch))
            batches = epoch_batches(data, cfg, seed, epoch)
            if epoch == 0:
                shown = bar(len(batches), desc, enabled=progress, unit="step")
            elif shown is not None:
                shown.total += len(batches)
                shown.refresh()
            for batch in batches:
                stats.add(len(batch[0]), *finetune_step(model, dataset, batch, data, cfg, precision, optimizer,
                                                        scaler, step=stats.batches))
                if shown is not None:
                    shown.update(1)
    finally:
        if shown is not None:
            shown.close()
    model.reset_classifier(0)
    model.eval()
    return stats.finish(time.perf_counter() - start)
