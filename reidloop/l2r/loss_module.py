"""Loss-prediction modules and their losses: L2R-AL's listwise module (§III-C, §III-D) and LL4AL's
pairwise one (Yoo & Kweon, "Learning Loss for Active Learning", CVPR 2019), behind :class:`LossLearner`.

L2R-AL (Fig. 1): GAP → FC → LeakyReLU(0.01) → FC on the target model's *last-block* features, which
are detached (the gradient stops before the target model); trained with the rank loss of Eq. 5–6,
``mean_i (rk(l_i) − f_sort(l̂_i))²``, where the frozen sorter turns the predicted losses of a batch into
ranks. The target model is trained separately on its own loss, Eq. 2: ``mean_i l_i``.

LL4AL: one GAP → FC → ReLU branch per block of the target model, concatenated, → FC; trained with the
pairwise margin ranking loss jointly with the target loss (``l_target + λ·l_module``), its gradient
reaching the target model until ``detach_epoch``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .sorter import GRUSorter, ranks


def _gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x


class LossPredictionModule(nn.Module):
    """L2R-AL's module (§III-C): GAP + FC + LeakyReLU(slope) + FC: (B, C, H, W) or (B, C) → (B,) predicted losses."""

    def __init__(self, in_channels: int, hidden: int = 128, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.LeakyReLU(negative_slope), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(_gap(features)).squeeze(-1)


class LL4ALModule(nn.Module):
    """LL4AL's module: per block GAP → FC(C_k, hidden) → ReLU; concat → FC(K·hidden, 1)."""

    def __init__(self, channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(c, hidden), nn.ReLU()) for c in channels)
        self.out = nn.Linear(len(channels) * hidden, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.branches):
            raise ValueError(f"LL4AL module expects {len(self.branches)} feature maps, got {len(features)}")
        return self.out(torch.cat([b(_gap(f)) for b, f in zip(self.branches, features)], 1)).squeeze(-1)


def rank_loss(predicted: torch.Tensor, true: torch.Tensor, sorter: GRUSorter) -> torch.Tensor:
    """Eq. 5–6: MSE between the true losses' ranks and the sorter's ranks of the predicted losses.

    ``predicted`` and ``true`` are (d,) or (lists, d); the true losses carry no gradient.
    """
    if predicted.shape != true.shape or predicted.shape[-1] < 2:
        raise ValueError(f"rank_loss needs predicted and true losses of one shape, length >= 2; got "
                         f"{tuple(predicted.shape)} and {tuple(true.shape)}")
    p = predicted.reshape(-1, predicted.shape[-1])
    t = true.detach().reshape(-1, true.shape[-1])
    return F.mse_loss(sorter(p), ranks(t))


def margin_ranking_loss(predicted: torch.Tensor, true: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """LL4AL's pairwise loss: the batch split into pairs (i, d−1−i); hinge on the predicted difference's sign."""
    d = predicted.shape[0]
    if d < 2 or d % 2:
        raise ValueError(f"LL4AL's margin ranking loss pairs the batch up: its size must be even, got {d}")
    dp = (predicted - predicted.flip(0))[: d // 2]
    dt = (true - true.flip(0)).detach()[: d // 2]
    sign = torch.where(dt > 0, 1.0, -1.0)
    return torch.clamp(margin - sign * dp, min=0).mean()


class LossLearner(ABC):
    """A loss-prediction module with its optimiser and its way of being trained beside the target model.

    Per training batch the experiment calls :meth:`loss` with the target model's block features and
    per-sample losses and adds the result (times ``weight``) to the target loss (Eq. 2) before one
    backward pass: the features :meth:`inputs` detaches carry no gradient into the target model.
    """

    name: ClassVar[str]
    weight: float = 1.0

    def __init__(self, module: nn.Module, lr: float) -> None:
        self.module = module
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    @abstractmethod
    def inputs(self, features: Sequence[torch.Tensor], epoch: int):
        """What the module sees of the target model's block features at ``epoch``."""

    @abstractmethod
    def criterion(self, predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """The module's own loss from predicted and true per-sample losses."""

    def predict(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B,) predicted losses (used to query and for the test-set Spearman of Fig. 5)."""
        return self.module(self.inputs(features, epoch=10**9))

    def loss(self, features: Sequence[torch.Tensor], true: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.criterion(self.module(self.inputs(features, epoch)), true.detach())

    def to(self, device: torch.device | str) -> "LossLearner":
        """Everything the learner computes with on ``device``, before it trains: the optimiser is built again
        over the moved parameters (``Module.to`` may replace them rather than move them in place)."""
        if self.optimizer.state:
            raise RuntimeError("move the loss learner to its device before it trains (its optimiser has state)")
        self.module.to(device)
        self.optimizer = type(self.optimizer)(self.module.parameters(), **self.optimizer.defaults)
        return self


class L2RLearner(LossLearner):
    """L2R-AL: last-block features, detached; rank loss through the frozen sorter (Eq. 5–6)."""

    name = "l2r"

    def __init__(self, channels: Sequence[int], sorter: GRUSorter, hidden: int = 128,
                 negative_slope: float = 0.01, lr: float = 1e-3) -> None:
        super().__init__(LossPredictionModule(channels[-1], hidden, negative_slope), lr)
        self.sorter = sorter

    def inputs(self, features, epoch):
        return features[-1].detach()  # the gradient stops before the target model (§III-C)

    def criterion(self, predicted, true):
        return rank_loss(predicted, true, self.sorter)

    def to(self, device: torch.device | str) -> "L2RLearner":
        super().to(device)
        self.sorter.to(device)  # the frozen sorter too: the rank loss runs it on the predicted losses
        return self


class LL4ALLearner(LossLearner):
    """LL4AL: features of all blocks, joint training until ``detach_epoch``, pairwise margin loss."""

    name = "ll4al"

    def __init__(self, channels: Sequence[int], hidden: int = 128, margin: float = 1.0, weight: float = 1.0,
                 detach_epoch: int = 120, lr: float = 1e-3) -> None:
        super().__init__(LL4ALModule(channels, hidden), lr)
        self.margin, self.weight, self.detach_epoch = margin, weight, detach_epoch

    def inputs(self, features, epoch):
        return [f.detach() for f in features] if epoch >= self.detach_epoch else list(features)

    def criterion(self, predicted, true):
        return margin_ranking_loss(predicted, true, self.margin)
