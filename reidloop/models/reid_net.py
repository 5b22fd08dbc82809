"""The Re-ID network of DRAL Sec. 3.1 and its checkpoints.

backbone → global average pooling → feature f (C-dim, fed to the triplet loss,
Eq. 2) → BNNeck (BatchNorm1d with a frozen zero bias, Luo et al. "Bag of
Tricks") → bias-free linear classifier (fed to the cross-entropy loss, Eq. 1).
In eval mode the network returns the embedding used for retrieval: the
post-BN feature with ``neck="bnneck"``, else f.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from ..atomic import torch_save
from ..config.schema import ModelConfig
from .backbones import BACKBONE_NAMES, build_backbone
from .weights import load_backbone_weights

log = logging.getLogger(__name__)

NECKS = ("bnneck", "none")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


class ReidOutput(NamedTuple):
    """Training-mode output: ``features`` for the triplet loss, ``logits`` for cross entropy."""

    features: torch.Tensor  # B×C, before the BNNeck
    logits: Optional[torch.Tensor]  # B×num_classes; None when the model has no classifier


class ReidNet(nn.Module):
    def __init__(self, backbone_name: str, num_classes: int, neck: str = "bnneck", last_stride: int = 1):
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"neck: {neck!r} is not one of {list(NECKS)}")
        if backbone_name not in BACKBONE_NAMES:
            raise ValueError(f"backbone: {backbone_name!r} is not one of {list(BACKBONE_NAMES)}")
        self.backbone_name, self.neck, self.last_stride = backbone_name, neck, last_stride
        self.backbone, self.embed_dim = build_backbone(backbone_name, last_stride)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck: Optional[nn.BatchNorm1d] = None
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(self.embed_dim)
            self.bottleneck.bias.requires_grad_(False)  # BNNeck: shift-free, so f and its BN share the origin
        self.classifier: Optional[nn.Linear] = None
        self.num_classes = 0
        self.reset_classifier(num_classes)

    def config(self) -> dict:
        """Plain-dict architecture description (what ``load_checkpoint`` rebuilds from)."""
        return {"backbone": self.backbone_name, "neck": self.neck, "last_stride": self.last_stride}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: no classifier)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes: {num_classes!r} must be an int >= 0")
        self.num_classes = num_classes
        if num_classes == 0:
            self.classifier = None
            return
        ref = next(self.backbone.parameters())
        self.classifier = nn.Linear(self.embed_dim, num_classes, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.normal_(self.classifier.weight, std=0.001)  # as in Bag of Tricks

    def forward(self, x: torch.Tensor) -> ReidOutput | torch.Tensor:
        f = self.pool(self.backbone(x)).flatten(1)
        embedding = self.bottleneck(f) if self.bottleneck is not None else f
        if not self.training:
            return embedding
        logits = self.classifier(embedding) if self.classifier is not None else None
        return ReidOutput(features=f, logits=logits)


def build_model(cfg: ModelConfig, num_classes: int) -> ReidNet:
    """``ReidNet`` from ``cfg``, with ``cfg.weights`` (a local file or "imagenet") loaded into the backbone."""
    model = ReidNet(cfg.backbone, num_classes, neck=cfg.neck, last_stride=cfg.last_stride)
    if cfg.weights:
        report = load_backbone_weights(model.backbone, cfg.backbone, cfg.weights)
        log.info("%s", report)
    return model


def _check_plain(value, where: str) -> None:
    """Reject values that ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} must be str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint "
                        "(use str/int/float/bool/None/tensors and lists/dicts of them)")


def save_checkpoint(path: str | Path, model: ReidNet, extra: Optional[dict] = None) -> None:
    """Write ``{"model", "config", "num_classes", "extra"}`` to ``path`` atomically (tmp file + os.replace)."""
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"model": state, "config": model.config(), "num_classes": model.num_classes, "extra": extra}
    torch_save(payload, path)


def load_checkpoint(path: str | Path) -> tuple[ReidNet, dict]:
    """Rebuild the model saved by ``save_checkpoint``; returns ``(model, extra)`` (model on CPU, train mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from exc
    keys = ("model", "config", "num_classes", "extra")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a reidloop checkpoint (expected keys {list(keys)}, found {found})")
    cfg = ckpt["config"]
    try:
        model = ReidNet(cfg["backbone"], ckpt["num_classes"], neck=cfg["neck"], last_stride=cfg["last_stride"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        why = " ".join(str(exc).split())[:500]
        raise ValueError(f"{path}: checkpoint does not match its config {cfg!r}: {why}") from exc
    return model, ckpt["extra"]
