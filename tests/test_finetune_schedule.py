"""The fine-tune's lr schedule: a frozen body while a fresh CE head learns, then a linear warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reidloop.active.finetune import finetune, lr_factor
from reidloop.config import ConfigError, FinetuneConfig, LoopJob, ModelConfig, load_config
from reidloop.config.schema import SyntheticConfig
from reidloop.data.synthetic import synthetic_splits
from reidloop.engine.precision import resolve_precision
from reidloop.models import build_model


def test_lr_factor_freezes_the_body_then_warms_up():
    cfg = FinetuneConfig(freeze_steps=2, warmup_steps=4)
    body = [lr_factor(s, cfg, body=True) for s in range(8)]
    head = [lr_factor(s, cfg, body=False) for s in range(6)]
    assert body == pytest.approx([0, 0, 0.1, 0.325, 0.55, 0.775, 1, 1])
    assert head == pytest.approx([0.1, 0.325, 0.55, 0.775, 1, 1])
    # without a CE head there is nothing to train alone: the body warms up from step 0
    assert [lr_factor(s, cfg, body=True, has_head=False) for s in range(2)] == pytest.approx([0.1, 0.325])
    assert lr_factor(0, FinetuneConfig(), body=True) == 1.0  # the defaults change nothing


@pytest.mark.parametrize("field", ["freeze_steps", "warmup_steps"])
def test_negative_schedule_is_rejected_naming_the_field(field):
    with pytest.raises(ConfigError, match=f"finetune.{field}: -1"):
        load_config(LoopJob, None, [f"finetune.{field}=-1"])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    cfg = SyntheticConfig(train_ids=4, test_ids=2, images_per_camera=2, cameras=2, height=32, width=16)
    return synthetic_splits(cfg, str(tmp_path_factory.mktemp("syn"))).train


def _body(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier.")}


@pytest.mark.parametrize("freeze_steps, moves", [(100, False), (0, True)])
def test_a_frozen_body_is_not_updated(pool, freeze_steps, moves):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), num_classes=0)
    before = _body(model)
    pids = np.array([r.pid for r in pool])
    q = np.repeat(np.arange(len(pool)), 3)
    c = (q + np.tile([1, 4, 8], len(pool))) % len(pool)
    y = np.where(pids[q] == pids[c], 1, -1)
    cfg = FinetuneConfig(lr=1e-3, epochs=2, queries_per_batch=8, freeze_steps=freeze_steps, amp="off")
    stats = finetune(model, pool, cfg, height=32, width=16, precision=resolve_precision("off", torch.device("cpu")),
                     mode="pairs", seed=0, queries=q, candidates=c, answers=y)
    assert stats.batches >= 2 and stats.ce > 0  # a CE head existed and trained
    after = _body(model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert bool(changed) == moves


# ------------------------------------------------------------------ the learners' UpperBound
def test_upperbound_pairs_are_the_nearest_kmax_and_every_same_person_image():
    from reidloop.active.finetune import upperbound_pairs

    features = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 2, 2, 0])
    q, c, y = upperbound_pairs(features, labels, np.array([0, 3]), kmax=2)
    pairs = sorted(zip(q.tolist(), c.tolist(), y.tolist()))
    # query 0: nearest 1 and 2, and its person's other images 2 and 5; query 3: nearest 2 and 1, and 4 (its person)
    assert pairs == [(0, 1, -1), (0, 2, 1), (0, 5, 1), (3, 1, -1), (3, 2, -1), (3, 4, 1)]


def test_upperbound_batches_have_the_learners_shape():
    """Same queries per batch and batches per epoch as the learners; every pair of a batch labelled."""
    from reidloop.active.finetune import epoch_batches, finetune_data, upperbound_pairs

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    features = rng.normal(size=(40, 8)).astype(np.float32) + labels[:, None]
    queries = np.arange(0, 40, 3)  # 14 queries browsed
    cfg = FinetuneConfig(queries_per_batch=4)
    pairs = dict(zip(("queries", "candidates", "answers"), upperbound_pairs(features, labels, queries, kmax=3)))
    batches = epoch_batches(finetune_data(40, cfg, "pairs", **pairs, truth=labels), cfg, seed=0, epoch=0)
    # a learner that answered the same questions about the same 14 queries: ceil(14 / 4) batches of 4 queries
    learner = epoch_batches(finetune_data(40, cfg, "pairs", **pairs), cfg, seed=0, epoch=0)
    assert len(batches) == len(learner) == 4
    assert [len(np.intersect1d(b[0], queries)) for b in batches] == [len(np.intersect1d(b[0], queries))
                                                                     for b in learner]
    seen = []
    for items, pos, neg in batches:
        assert len(pos) + len(neg) == len(items) * (len(items) - 1) // 2  # every pair labelled
        lab = labels[items]
        assert all(lab[i] == lab[j] for i, j in pos) and all(lab[i] != lab[j] for i, j in neg)
        seen.extend(np.intersect1d(items, queries).tolist())
    assert set(seen) == set(queries.tolist())
