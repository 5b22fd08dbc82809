"""Typed configuration of L2R-AL (Li et al., "Learning to Rank for Active Learning: a listwise approach").

Sections: the differentiable sorter (§III-B, §IV), the CIFAR-10 classification experiment
(§IV-A: data, active-learning protocol, target-model training, loss-prediction modules) and the
learned-loss ranking strategy of the Re-ID loop. Loaded like every job config::

    load_config(L2RExperimentJob, "tune_configs/l2r_cifar10_cpu.yaml", ["seeds=[0]"])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .loader import ConfigError

DISTRIBUTIONS = ("uniform", "normal", "exponential", "lognormal", "bimodal", "arange", "mixed")
ACQUISITIONS = ("random", "entropy", "coreset", "ll4al", "l2r")
CLASSIFIERS = ("resnet18", "small_cnn")


def _check(cond: bool, name: str, value, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {value!r} {why}")


@dataclass
class SorterConfig:
    """The bidirectional-GRU sorter and its synthetic pre-training (§III-B; SoDeep, Engilberge et al. 2019)."""

    seq_len: int = 64  # the paper: 64 for classification (= the batch size of the loss module)
    min_len: Optional[int] = None  # also train on lengths in [min_len, seq_len] (None: seq_len only)
    hidden: int = 64
    layers: int = 2
    distributions: list[str] = field(default_factory=lambda: list(DISTRIBUTIONS))
    steps: int = 3000  # optimiser steps, each on `batch_size` fresh synthetic sequences
    batch_size: int = 128
    lr: float = 1e-3  # Adam, halved every `lr_step` steps (SoDeep's schedule)
    lr_step: int = 1000
    eval_sequences: int = 2000  # held-out sequences for the reported Spearman correlation
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.seq_len >= 2, "seq_len", self.seq_len, "must be >= 2")
        _check(self.min_len is None or 2 <= self.min_len <= self.seq_len, "min_len", self.min_len,
               f"must be in [2, seq_len={self.seq_len}]")
        _check(self.hidden >= 1 and self.layers >= 1, "hidden/layers", (self.hidden, self.layers), "must be >= 1")
        unknown = [d for d in self.distributions if d not in DISTRIBUTIONS]
        _check(bool(self.distributions) and not unknown, "distributions", self.distributions,
               f"must be a non-empty list of {list(DISTRIBUTIONS)}")
        _check(self.steps >= 0 and self.batch_size >= 1, "steps/batch_size", (self.steps, self.batch_size),
               "need steps >= 0 and batch_size >= 1")
        _check(self.lr > 0 and self.lr_step >= 1, "lr/lr_step", (self.lr, self.lr_step), "need lr > 0, lr_step >= 1")
        _check(self.eval_sequences >= 1, "eval_sequences", self.eval_sequences, "must be >= 1")

    @property
    def lengths(self) -> tuple[int, int]:
        """(shortest, longest) sequence length the sorter is trained on."""
        return (self.min_len or self.seq_len, self.seq_len)


@dataclass
class CifarDataConfig:
    """The CIFAR-10 folder (train/<class>/*.png, test/<class>/*.png) and augmentation (§IV-A)."""

    root: Optional[str] = None
    train_per_class: Optional[int] = None  # the pool: first N images per class (None: all)
    test_size: Optional[int] = None  # evaluate on a fixed random test subset of this size (None: all)
    crop_padding: int = 2  # random 32×32 crop of the zero-padded image (paper: 36×36 → 2)
    flip: bool = True

    def __post_init__(self) -> None:
        _check(bool(self.root), "data.root", self.root, "must name the cifar10 folder")
        _check(self.train_per_class is None or self.train_per_class >= 1, "data.train_per_class",
               self.train_per_class, "must be >= 1")
        _check(self.test_size is None or self.test_size >= 1, "data.test_size", self.test_size, "must be >= 1")
        _check(0 <= self.crop_padding <= 16, "data.crop_padding", self.crop_padding, "must be in [0, 16]")


@dataclass
class ProtocolConfig:
    """The active-learning protocol (§IV-A: 1,000 initial, +1,000 per cycle, 10 cycles, subset 10,000)."""

    initial: int = 1000
    per_cycle: int = 1000
    cycles: int = 10  # test accuracy is measured after training in each cycle
    subset: int = 10000  # each query scores a random subset of the unlabelled pool

    def __post_init__(self) -> None:
        _check(self.initial >= 1, "protocol.initial", self.initial, "must be >= 1")
        _check(self.per_cycle >= 1, "protocol.per_cycle", self.per_cycle, "must be >= 1")
        _check(self.cycles >= 1, "protocol.cycles", self.cycles, "must be >= 1")
        _check(self.subset >= self.per_cycle, "protocol.subset", self.subset,
               f"must be >= per_cycle={self.per_cycle}")


@dataclass
class TargetTrainConfig:
    """The target model and its SGD training on Eq. 2 (§IV-A: lr 0.1 → 0.01 after 120 of 150 epochs)."""

    model: str = "resnet18"
    width: int = 32  # channels of the small CNN's first block (ignored by resnet18)
    epochs: int = 150
    milestones: list[int] = field(default_factory=lambda: [120])  # lr × 0.1 at each
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    reinit_each_cycle: bool = False  # False: continue training the same model (the paper, LL4AL)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        _check(self.model in CLASSIFIERS, "train.model", self.model, f"is not one of {list(CLASSIFIERS)}")
        _check(self.width >= 4, "train.width", self.width, "must be >= 4")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "must be >= 1")
        _check(all(0 < m < self.epochs for m in self.milestones), "train.milestones", self.milestones,
               f"must lie in (0, epochs={self.epochs})")
        _check(self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0, "train.lr/momentum/weight_decay",
               (self.lr, self.momentum, self.weight_decay), "need lr > 0, momentum in [0, 1), weight_decay >= 0")
        _check(self.batch_size >= 2, "train.batch_size", self.batch_size, "must be >= 2 (ranking needs a list)")


@dataclass
class LossModuleConfig:
    """The loss-prediction modules: L2R-AL's (§III-C, Adam 1e-3) and LL4AL's (Yoo & Kweon, CVPR 2019)."""

    hidden: int = 128  # L2R: GAP → FC(C, hidden) → LeakyReLU(slope) → FC(hidden, 1)
    negative_slope: float = 0.01
    lr: float = 1e-3  # Adam, both modules (§IV-A)
    ll4al_hidden: int = 128  # per-block FC width of LL4AL's module
    ll4al_margin: float = 1.0  # ξ of LL4AL's pairwise margin ranking loss
    ll4al_weight: float = 1.0  # λ: target loss + λ · module loss (LL4AL trains them jointly)
    ll4al_detach_epoch: int = 120  # from this epoch on LL4AL's module gradient no longer reaches the target

    def __post_init__(self) -> None:
        _check(self.hidden >= 1 and self.ll4al_hidden >= 1, "module.hidden/ll4al_hidden",
               (self.hidden, self.ll4al_hidden), "must be >= 1")
        _check(0 <= self.negative_slope < 1, "module.negative_slope", self.negative_slope, "must be in [0, 1)")
        _check(self.lr > 0, "module.lr", self.lr, "must be > 0")
        _check(self.ll4al_margin >= 0 and self.ll4al_weight >= 0, "module.ll4al_margin/ll4al_weight",
               (self.ll4al_margin, self.ll4al_weight), "must be >= 0")
        _check(self.ll4al_detach_epoch >= 0, "module.ll4al_detach_epoch", self.ll4al_detach_epoch, "must be >= 0")


@dataclass
class L2RExperimentJob:
    """`python -m trainers.l2r_experiment` — every strategy × seed of the CIFAR-10 experiment (§IV-A)."""

    data: CifarDataConfig = field(default_factory=lambda: CifarDataConfig(root="../shared/data/cifar10"))
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: TargetTrainConfig = field(default_factory=TargetTrainConfig)
    module: LossModuleConfig = field(default_factory=LossModuleConfig)
    sorter: SorterConfig = field(default_factory=SorterConfig)
    sorter_path: Optional[str] = None  # a checkpoint of trainers.train_sorter; trained and saved here if absent
    strategies: list[str] = field(default_factory=lambda: list(ACQUISITIONS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # the paper: 5 runs
    cpus_per_run: float = 1.0  # Ray resources of one (strategy, seed) task; fractions allowed
    gpus_per_run: float = 0.0
    output_dir: str = "runs/l2r_cifar10"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in ACQUISITIONS]
        _check(bool(self.strategies) and not unknown and len(set(self.strategies)) == len(self.strategies),
               "strategies", self.strategies, f"must be distinct names from {list(ACQUISITIONS)}")
        _check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds,
               "must be a non-empty list of distinct ints")
        _check(self.cpus_per_run > 0 and self.gpus_per_run >= 0, "cpus_per_run/gpus_per_run",
               (self.cpus_per_run, self.gpus_per_run), "need cpus > 0 and gpus >= 0")
        lo, hi = self.sorter.lengths
        _check("l2r" not in self.strategies or lo <= self.train.batch_size <= hi, "sorter.seq_len",
               self.sorter.seq_len, f"must cover train.batch_size={self.train.batch_size} (the rank loss sorts "
               f"one batch of predicted losses; trained lengths are [{lo}, {hi}])")
        _check(self.module.ll4al_detach_epoch <= self.train.epochs, "module.ll4al_detach_epoch",
               self.module.ll4al_detach_epoch, f"must be <= train.epochs={self.train.epochs}")


@dataclass
class L2RReidConfig:
    """The learned-loss ranking strategy of the Re-ID loop (reidloop.strategies.l2r)."""

    hidden: int = 64  # pair head: FC(2D+1, hidden) → LeakyReLU(0.01) → FC(hidden, 1)
    lr: float = 1e-3  # Adam
    steps: int = 40  # optimiser steps per (re)training
    lists_per_step: int = 16  # random lists of answered pairs per step, each ranked by the frozen sorter
    update_every: int = 32  # retrain after this many new answers within a round (and at each round start)
    min_answers: int = 8  # ask at random until this many pairs are answered
    # lists of 8 pairs: a sorter this small trains in seconds on a CPU, once per process
    sorter: SorterConfig = field(default_factory=lambda: SorterConfig(seq_len=8, hidden=16, layers=1, steps=200,
                                                                      batch_size=64, lr=1e-2, lr_step=100,
                                                                      eval_sequences=256))
    sorter_path: Optional[str] = None  # a trained sorter checkpoint (None: train `sorter` in-process once)

    def __post_init__(self) -> None:
        _check(self.hidden >= 1 and self.steps >= 0 and self.lists_per_step >= 1, "hidden/steps/lists_per_step",
               (self.hidden, self.steps, self.lists_per_step), "need hidden >= 1, steps >= 0, lists_per_step >= 1")
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(self.update_every >= 1, "update_every", self.update_every, "must be >= 1")
        _check(self.min_answers >= 2, "min_answers", self.min_answers, "must be >= 2 (a ranking needs two)")
