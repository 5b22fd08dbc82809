"""Convolutional backbones: torchvision ResNets and MobileNetV2 without their heads.

DRAL (Sec. 3.1) uses a ResNet-50; following Bag of Tricks (Luo et al., 2019) the
last downsampling can be removed (``last_stride=1``), doubling the final map's
height and width. Nothing is ever downloaded: every network is built with
``weights=None`` and ImageNet weights come from local files (see ``weights.py``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from torchvision import models

RESNETS = {"resnet18": (models.resnet18, 512), "resnet34": (models.resnet34, 512),
           "resnet50": (models.resnet50, 2048)}
BACKBONE_NAMES = (*RESNETS, "mobilenet_v2")


def _remove_last_downsampling(stages: nn.Sequential) -> None:
    """Set every stride-2 conv of the last stage that downsamples to stride 1."""
    for stage in reversed(list(stages.children())):
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        if convs:
            for conv in convs:
                conv.stride = (1, 1)
            return


def build_backbone(name: str, last_stride: int = 1) -> tuple[nn.Module, int]:
    """Return ``(feature extractor producing a B×C×h×w map, C)`` for backbone ``name``.

    ResNets keep torchvision's module names (``conv1``, ``layer1`` … ``layer4``) so a
    torchvision state dict minus ``fc.*`` loads by name; MobileNetV2 is
    ``mobilenet_v2().features`` (keys ``0.0.weight`` …). ``last_stride=1`` makes the
    last downsampling stage (ResNet ``layer4``, MobileNetV2 block 14) stride 1.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride: {last_stride!r} must be 1 or 2")
    if name in RESNETS:
        ctor, channels = RESNETS[name]
        net = ctor(weights=None)
        body = nn.Sequential(OrderedDict(
            (k, getattr(net, k))
            for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
    elif name == "mobilenet_v2":
        body, channels = models.mobilenet_v2(weights=None).features, 1280
    else:
        raise ValueError(f"backbone: {name!r} is not one of {list(BACKBONE_NAMES)}")
    if last_stride == 1:
        _remove_last_downsampling(body)
    return body, channels
