"""Loss-prediction modules (L2R-AL §III-C/D, LL4AL): shapes, the rank loss of Eq. 5–6, the gradient stop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidloop.config.l2r import SorterConfig, TargetTrainConfig
from reidloop.l2r.cifar import Augment
from reidloop.l2r.classifier import SmallCNN, train_cycle
from reidloop.l2r.loss_module import (L2RLearner, LL4ALLearner, LL4ALModule, LossPredictionModule,
                                      margin_ranking_loss, rank_loss)
from reidloop.l2r.sorter import ranks, spearman, train_sorter

SORTER = SorterConfig(seq_len=16, min_len=8, hidden=16, layers=1, steps=150, batch_size=64, lr=1e-2, lr_step=100)


@pytest.fixture(scope="module")
def sorter():
    return train_sorter(SORTER)


def test_module_shapes():
    m = LossPredictionModule(8, hidden=5)
    assert m(torch.randn(3, 8, 4, 4)).shape == (3,) and m(torch.randn(3, 8)).shape == (3,)
    assert isinstance(m.net[1], torch.nn.LeakyReLU) and m.net[1].negative_slope == 0.01
    ll = LL4ALModule([4, 8], hidden=3)
    assert ll([torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]).shape == (2,)
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        ll([torch.randn(2, 4, 8, 8)])


def test_rank_loss_is_the_mse_to_the_true_ranks(sorter):
    true = torch.tensor([0.5, 2.0, 0.1, 1.0, 3.0, 0.7, 0.2, 1.5])
    assert rank_loss(true, true, sorter) < 0.01  # right order: the sorter's ranks ≈ the true ranks
    assert rank_loss(-true, true, sorter) > 0.2  # reversed order
    pred = torch.randn(8)
    expected = F.mse_loss(sorter(pred[None]), ranks(true)[None])  # Eq. 6
    assert rank_loss(pred, true, sorter).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="one shape"):
        rank_loss(pred, true[:4], sorter)


def test_margin_ranking_loss_pairs_i_with_its_mirror():
    true = torch.tensor([2.0, 0.0, 1.0, 1.5])  # pairs (0, 3): 2 > 1.5; (1, 2): 0 < 1
    assert margin_ranking_loss(torch.tensor([3.0, 0.0, 2.0, 1.0]), true).item() == 0.0  # gaps ≥ margin 1
    # pair (0,3) predicted gap +0.5 → hinge 0.5; pair (1,2) predicted gap +1 with the wrong sign → 2
    assert margin_ranking_loss(torch.tensor([1.0, 1.0, 0.0, 0.5]), true).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="even"):
        margin_ranking_loss(torch.zeros(3), torch.zeros(3))


def test_rank_loss_moves_the_module_and_leaves_the_target_model_untouched(sorter):
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    learner = L2RLearner(model.channels, sorter, hidden=8)
    before_model = [p.detach().clone() for p in model.parameters()]
    before_module = [p.detach().clone() for p in learner.module.parameters()]
    logits, feats = model(torch.randn(8, 3, 32, 32))
    per_sample = F.cross_entropy(logits, torch.arange(8) % 10, reduction="none")
    learner.optimizer.zero_grad()
    learner.loss(feats, per_sample, epoch=0).backward()
    learner.optimizer.step()
    assert all(p.grad is None for p in model.parameters())  # the gradient stops before the target model
    assert all(torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert all(p.grad is not None for p in learner.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before_module, learner.module.parameters()))


def _train(learner_kind: str | None, sorter):
    """Two epochs of train_cycle on random images; returns the target model and the module."""
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    learner = {None: None, "l2r": lambda: L2RLearner(model.channels, sorter, hidden=8),
               "ll4al": lambda: LL4ALLearner(model.channels, hidden=8, detach_epoch=2)}[learner_kind]
    learner = learner() if learner else None
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(16) % 10
    cfg = TargetTrainConfig(model="small_cnn", epochs=2, milestones=[1], batch_size=8, lr=0.05)
    aug = Augment(torch.full((3,), 0.5), torch.full((3,), 0.25), padding=2, flip=True)
    module_before = [p.detach().clone() for p in learner.module.parameters()] if learner else []
    stats = train_cycle(model, learner, images, labels, np.arange(16), cfg, aug, g, module_lr=1e-2)
    return model, learner, module_before, stats


def test_target_model_trains_on_eq2_alone_beside_the_l2r_module(sorter):
    plain, _, _, _ = _train(None, sorter)
    with_l2r, learner, module_before, stats = _train("l2r", sorter)
    with_ll4al, _, _, _ = _train("ll4al", sorter)
    # L2R-AL: the module's rank loss never reaches the target model: bit-identical training (Eq. 2 only)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), with_l2r.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(module_before, learner.module.parameters()))
    assert stats["module_loss"] > 0
    # LL4AL trains jointly (before its detach epoch): its module loss changes the target model
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), with_ll4al.parameters()))


def test_rank_loss_teaches_the_module_the_order_of_losses(sorter):
    """Losses given by a hidden function of the features: after training, held-out Spearman is high."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=g)
    x_train, x_test = torch.randn(512, 6, generator=g), torch.randn(256, 6, generator=g)
    loss_of = lambda x: torch.exp(x @ w) + 0.5 * (x[:, 0] ** 2)  # noqa: E731
    torch.manual_seed(0)
    module = LossPredictionModule(6, hidden=32)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for step in range(60):
        idx = torch.randint(0, 512, (8, 16), generator=g)  # 8 lists of 16 = the sorter's length
        loss = rank_loss(module(x_train[idx.flatten()]).view(8, 16), loss_of(x_train[idx.flatten()]).view(8, 16),
                         sorter)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert spearman(module(x_test), loss_of(x_test)).item() > 0.9
