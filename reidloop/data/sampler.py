"""The P×K identity sampler used for triplet-loss training (P identities × K images per batch)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    """Yield dataset indices in batches of ``p * k``: ``p`` distinct identities × ``k`` images each.

    Each epoch shuffles the identities and visits every identity once; the last group of fewer
    than ``p`` identities is completed with identities drawn from the others, so every batch is
    full and ``len(self) == ceil(n_ids / p) * p * k``. An identity with at least ``k`` images
    contributes ``k`` distinct ones; one with fewer contributes all of its images plus draws with
    replacement. The order depends only on ``seed`` and the epoch set with :meth:`set_epoch`.
    Use it with ``DataLoader(batch_size=p * k, sampler=...)``.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        for name, value in (("p", p), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"PKSampler: {name} must be a positive integer, got {value!r}")
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1:
            raise ValueError(f"PKSampler: labels must be 1-D, got shape {labels_arr.shape}")
        order = np.argsort(labels_arr, kind="stable")
        ids, starts = np.unique(labels_arr[order], return_index=True)
        if len(ids) < p:
            raise ValueError(f"PKSampler: needs at least p={p} identities, the labels hold {len(ids)}")
        self._groups = np.split(order, starts[1:])  # dataset indices of each identity, ascending
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.epoch = 0
        self.num_batches = -(-len(ids) // self.p)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.p * self.k

    def _pick(self, rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
        if len(group) >= self.k:
            return rng.choice(group, self.k, replace=False)
        extra = rng.choice(group, self.k - len(group), replace=True)
        return np.concatenate([rng.permutation(group), extra])

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self._groups)
        perm = rng.permutation(n)
        short = self.num_batches * self.p - n
        if short:
            last = perm[n - (n % self.p):]
            fill = rng.choice(np.setdiff1d(perm, last), short, replace=False)
            perm = np.concatenate([perm, fill])
        picks = np.concatenate([self._pick(rng, self._groups[i]) for i in perm])
        return iter(picks.tolist())
