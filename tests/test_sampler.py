"""The P×K identity sampler: batch composition, coverage, determinism, small identities."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reidloop.data.sampler import PKSampler

# 7 identities with 1..9 images, labels not contiguous and interleaved in the dataset
LABELS = [10, 3, 10, 42, 3, 7, 10, 42, 5, 10, 3, 10, 8, 42, 10, 10, 10, 6, 10, 3, 7]


def _batches(sampler):
    idx = list(sampler)
    n = sampler.p * sampler.k
    return [idx[i:i + n] for i in range(0, len(idx), n)]


@pytest.mark.parametrize("p,k", [(3, 4), (2, 2), (7, 3), (4, 1)])
def test_batches_hold_p_ids_times_k_images(p, k):
    sampler = PKSampler(LABELS, p=p, k=k, seed=0)
    idx = list(sampler)
    assert len(idx) == len(sampler) and len(idx) % (p * k) == 0
    assert all(isinstance(i, int) and 0 <= i < len(LABELS) for i in idx)
    for batch in _batches(sampler):
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == p and set(counts.values()) == {k}
    assert {LABELS[i] for i in idx} == set(LABELS)  # every identity visited
    assert len(sampler) == -(-len(set(LABELS)) // p) * p * k  # about once per epoch


def test_distinct_images_when_identity_is_large_enough():
    sampler = PKSampler(LABELS, p=3, k=4, seed=1)
    for batch in _batches(sampler):
        for label in {LABELS[i] for i in batch}:
            picked = [i for i in batch if LABELS[i] == label]
            available = LABELS.count(label)
            # >= k images: k distinct ones; fewer: all of them, the rest repeated
            assert len(set(picked)) == min(available, 4)


def test_single_image_identity_is_repeated_k_times():
    labels = [0, 1, 1, 1, 2, 2]
    sampler = PKSampler(labels, p=3, k=3, seed=0)
    idx = list(sampler)
    assert len(idx) == 9 and idx.count(0) == 3


def test_deterministic_per_seed_and_epoch():
    a, b = PKSampler(LABELS, 3, 4, seed=5), PKSampler(LABELS, 3, 4, seed=5)
    assert list(a) == list(b) == list(a)
    epoch0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != epoch0
    assert list(PKSampler(LABELS, 3, 4, seed=6)) != epoch0


def test_accepts_numpy_and_tensor_labels():
    ref = list(PKSampler(LABELS, 2, 2, seed=0))
    assert list(PKSampler(np.array(LABELS), 2, 2, seed=0)) == ref
    assert list(PKSampler(torch.tensor(LABELS), 2, 2, seed=0)) == ref


def test_works_with_dataloader():
    ds = TensorDataset(torch.tensor(LABELS))
    sampler = PKSampler(LABELS, p=2, k=3, seed=0)
    batches = [b[0] for b in DataLoader(ds, batch_size=6, sampler=sampler)]
    assert len(batches) == len(sampler) // 6
    for labels in batches:
        assert sorted(Counter(labels.tolist()).values()) == [3, 3]


def test_too_few_identities():
    with pytest.raises(ValueError, match="at least p=4 identities.*3"):
        PKSampler([0, 0, 1, 2], p=4, k=2, seed=0)
    with pytest.raises(ValueError, match="at least p=2 identities.*0"):
        PKSampler([], p=2, k=2, seed=0)


@pytest.mark.parametrize("p,k", [(0, 2), (2, 0), (2.5, 2), (True, 2)])
def test_bad_p_k(p, k):
    with pytest.raises(ValueError, match="positive integer"):
        PKSampler(LABELS, p=p, k=k, seed=0)
