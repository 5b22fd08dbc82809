"""The target models of the L2R-AL classification experiment and their training beside a loss-prediction module.

Both models return ``(logits, [output of each block])``: the block outputs feed the learner's
loss-prediction module (:mod:`reidloop.l2r.loss_module`), the last one's GAP is the embedding
that core-set acquisition uses.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.l2r import TargetTrainConfig
from .cifar import CLASSES, Augment
from .loss_module import LossLearner


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class CifarResNet18(nn.Module):
    """The CIFAR ResNet-18 of LL4AL and L2R-AL (3×3 stem, no max-pool, blocks of 64/128/256/512)."""

    channels = (64, 128, 256, 512)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        cin, layers = 64, []
        for i, c in enumerate(self.channels):
            layers.append(nn.Sequential(BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)))
            cin = c
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, [output of each block]); the last block's output feeds GAP → FC."""
        feats, out = [], self.stem(x)
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        return self.fc(out.mean(dim=(2, 3))), feats


class SmallCNN(nn.Module):
    """A CPU-sized target model: three conv-BN-ReLU-maxpool blocks (w, 2w, 4w channels), GAP, FC."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.channels = (width, 2 * width, 4 * width)
        cin, blocks = 3, []
        for c in self.channels:
            blocks.append(nn.Sequential(nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats, out = [], x
        for block in self.blocks:
            out = block(out)
            feats.append(out)
        return self.fc(out.mean(dim=(2, 3))), feats


def build_classifier(cfg: TargetTrainConfig, num_classes: int = len(CLASSES)) -> nn.Module:
    return CifarResNet18(num_classes) if cfg.model == "resnet18" else SmallCNN(cfg.width, num_classes)


def train_cycle(model: nn.Module, learner: Optional[LossLearner], images: torch.Tensor, labels: torch.Tensor,
                labelled: np.ndarray, cfg: TargetTrainConfig, augment: Augment, g: torch.Generator,
                module_lr: float) -> dict[str, float]:
    """Train the target model on Eq. 2 (and the learner's module on its own loss) for ``cfg.epochs``.

    One backward pass per batch on ``l_target + weight · l_module``: L2R-AL's module sees detached
    features, so its rank loss (Eq. 6) updates only the module and Eq. 2 only the target model.
    """
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, 0.1)
    if learner is not None:
        learner.optimizer = torch.optim.Adam(learner.module.parameters(), lr=module_lr)
        learner.module.train()
    model.train()
    n = len(labelled)
    bs = min(cfg.batch_size, n - n % 2)  # LL4AL pairs the batch up: keep it even
    idx = torch.as_tensor(labelled, device=images.device)
    stats = {"target_loss": 0.0, "module_loss": 0.0}
    for epoch in range(cfg.epochs):
        perm = idx[torch.randperm(n, generator=g).to(images.device)]
        totals, batches = [0.0, 0.0], n // bs
        for b in range(batches):
            bi = perm[b * bs:(b + 1) * bs]
            logits, feats = model(augment(images[bi], g))
            per_sample = F.cross_entropy(logits, labels[bi], reduction="none")
            loss = per_sample.mean()  # Eq. 2
            totals[0] += float(loss.detach())
            if learner is not None:
                module_loss = learner.loss(feats, per_sample, epoch)
                totals[1] += float(module_loss.detach())
                loss = loss + learner.weight * module_loss
                learner.optimizer.zero_grad(set_to_none=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if learner is not None:
                learner.optimizer.step()
        sched.step()
        stats = {"target_loss": totals[0] / batches, "module_loss": totals[1] / batches}
    return stats


@torch.no_grad()
def forward_all(model: nn.Module, learner: Optional[LossLearner], images: torch.Tensor, idx: np.ndarray,
                augment: Augment, labels: Optional[torch.Tensor] = None, batch: int = 500) -> dict[str, np.ndarray]:
    """Eval-mode outputs over ``images[idx]``: probs, embeddings (GAP of the last block), predicted and true losses."""
    model.eval()
    if learner is not None:
        learner.module.eval()
    out: dict[str, list] = {"probs": [], "embeddings": [], "predicted_loss": [], "loss": []}
    t = torch.as_tensor(idx, device=images.device)
    for s in range(0, len(t), batch):
        bi = t[s:s + batch]
        logits, feats = model(augment.normalise(images[bi]))
        out["probs"].append(logits.softmax(1).cpu())
        out["embeddings"].append(feats[-1].mean(dim=(2, 3)).cpu())
        if learner is not None:
            out["predicted_loss"].append(learner.predict(feats).cpu())
        if labels is not None:
            out["loss"].append(F.cross_entropy(logits, labels[bi], reduction="none").cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}
