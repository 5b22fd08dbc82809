"""Image transforms for Re-ID (fast-reid defaults), built on torchvision.transforms.v2."""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_AT_256 = 10  # fast-reid pads 10 px at 256×128; we keep that fraction of the height at any size


def pad_for(height: int) -> int:
    """Padding of the random-crop augmentation: 10 px at height 256, scaled with the height (≥ 1)."""
    return max(1, round(PAD_AT_256 * height / 256))


def build_transforms(height: int, width: int, train: bool) -> v2.Compose:
    """PIL RGB image → normalised float tensor of shape (3, height, width).

    Evaluation: resize to (height, width). Training adds, as fast-reid does: random horizontal
    flip, pad + random crop back to (height, width) — 10 px at 256×128, scaled with the height
    (a fixed 10 px would shift a 64×32 image by a third of its width) — and random erasing
    (p=0.5, applied after normalisation so the erased region is filled with the ImageNet mean, i.e. 0).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height/width must be positive, got ({height}, {width})")
    size = (height, width)
    steps: list = [v2.ToImage(), v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.Pad(pad_for(height)), v2.RandomCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        steps.append(v2.RandomErasing(p=0.5, value=0))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
