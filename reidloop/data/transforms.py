"""Image transforms for Re-ID (fast-reid defaults), built on torchvision.transforms.v2."""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 10


def build_transforms(height: int, width: int, train: bool) -> v2.Compose:
    """PIL RGB image → normalised float tensor of shape (3, height, width).

    Evaluation: resize to (height, width). Training adds, as fast-reid does: random horizontal
    flip, pad 10 px + random crop back to (height, width), and random erasing (p=0.5, applied
    after normalisation so the erased region is filled with the ImageNet mean, i.e. 0).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height/width must be positive, got ({height}, {width})")
    size = (height, width)
    steps: list = [v2.ToImage(), v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.Pad(PAD), v2.RandomCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        steps.append(v2.RandomErasing(p=0.5, value=0))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
