"""The differentiable sorter of L2R-AL (§III-B): ranks, Spearman, synthetic lists, training, checkpoints."""
from __future__ import annotations

import pytest
import torch

from reidloop.config.l2r import DISTRIBUTIONS, SorterConfig
from reidloop.l2r.sorter import (GRUSorter, evaluate_sorter, freeze, load_sorter, ranks, save_sorter, spearman,
                                 synthetic_sequences, train_sorter)

TINY = SorterConfig(seq_len=8, hidden=16, layers=1, steps=150, batch_size=64, lr=1e-2, lr_step=100,
                    eval_sequences=300)


@pytest.fixture(scope="module")
def trained():
    return train_sorter(TINY)


def test_ranks_are_ascending_and_normalised():
    assert ranks(torch.tensor([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert ranks(torch.tensor([[0.0, 5.0], [5.0, 0.0]])).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_spearman_of_equal_reversed_and_monotone_lists():
    x = torch.tensor([0.3, -1.0, 2.0, 0.1, 7.0])
    assert spearman(x, x).item() == pytest.approx(1.0)
    assert spearman(x, -x).item() == pytest.approx(-1.0)
    assert spearman(x, torch.exp(x)).item() == pytest.approx(1.0)  # ranks only
    with pytest.raises(ValueError, match="shape"):
        spearman(x, x[:3])


def test_synthetic_sequences_cover_every_distribution():
    g = torch.Generator().manual_seed(0)
    for name in DISTRIBUTIONS:
        x = synthetic_sequences(20, 8, g, [name])
        assert x.shape == (20, 8) and torch.isfinite(x).all()
        assert (x.std(1) > 0).all()  # no constant list: ranks are defined
    with pytest.raises(ValueError, match="cauchy"):
        synthetic_sequences(2, 8, g, ["cauchy"])


def test_short_training_reaches_high_heldout_spearman(trained):
    untrained = evaluate_sorter(freeze(GRUSorter(TINY.hidden, TINY.layers)), TINY)
    m = evaluate_sorter(trained, TINY)
    assert m["spearman"] > 0.95
    assert m["l1"] < 0.12 < 0.2 < untrained["l1"]  # it predicts the ranks, not only their order
    with pytest.raises(ValueError, match="training seed"):
        evaluate_sorter(trained, TINY, seed=TINY.seed)


def test_frozen_sorter_passes_gradients_to_its_input_only(trained):
    x = torch.randn(3, 8, requires_grad=True)
    (trained(x) * torch.arange(8.0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in trained.parameters())


def test_checkpoint_round_trip_and_bad_files(trained, tmp_path):
    path = tmp_path / "s" / "sorter.pt"
    save_sorter(path, trained, TINY, {"spearman": 0.99})
    loaded, cfg = load_sorter(path)
    assert cfg == TINY
    x = torch.randn(4, 8)
    assert torch.equal(loaded(x), trained(x))
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_sorter(tmp_path / "nothere.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a sorter checkpoint"):
        load_sorter(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable"):
        load_sorter(tmp_path / "junk.pt")


def test_sorter_rejects_a_single_value():
    with pytest.raises(ValueError, match="length >= 2"):
        GRUSorter(4, 1)(torch.zeros(2, 1))
