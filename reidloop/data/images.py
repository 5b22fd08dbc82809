"""Image files: listing, safe decoding, and the torch Dataset over ImageRecords."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from .records import DatasetError, ImageRecord

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise DatasetError naming it if it is not a folder."""
    p = Path(path)
    if not p.is_dir():
        state = "is not a folder" if p.exists() else "does not exist"
        raise DatasetError(f"{p}: {what} {state}")
    return p


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name; other files are ignored."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Fully decode ``path`` into an RGB image.

    Raises DatasetError naming the path for a missing, unreadable, truncated or non-image file,
    or one with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression-bomb guard).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                raise DatasetError(f"{path}: {img.width}x{img.height} pixels exceed "
                                   f"PIL.Image.MAX_IMAGE_PIXELS={limit}")
            img.load()
            return img.convert("RGB")
    except DatasetError:
        raise
    except Exception as exc:  # any decoder failure (PIL raises OSError, SyntaxError, ValueError, ...)
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def verify_images(records: Sequence[ImageRecord], skip_bad: bool = False) -> list[ImageRecord]:
    """Decode every image once; raise on the first bad one, or (``skip_bad``) log it and drop it."""
    good = []
    for rec in records:
        try:
            load_image(rec.path)
        except DatasetError as exc:
            if not skip_bad:
                raise
            log.warning("skipping unreadable image: %s", exc)
            continue
        good.append(rec)
    return good


def relabel(records: Sequence[ImageRecord]) -> dict[int, int]:
    """Map the records' person ids, in increasing order, to class labels 0..N-1."""
    return {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}


class ReidImageDataset(Dataset):
    """Items ``(image tensor, label, camid, index)`` for a list of ImageRecords.

    ``label`` is ``pid_to_label[pid]`` (e.g. from :func:`relabel`) or the raw pid when no map is given.
    With ``skip_bad=True`` the images are decoded once at construction and unreadable ones are
    logged and dropped (``self.records`` then holds the kept ones, and ``index`` refers to it);
    otherwise an unreadable image raises DatasetError when it is fetched.
    ``transform`` maps a PIL image to a tensor; None gives a float tensor in [0, 1].
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Optional[Callable] = None,
                 pid_to_label: Optional[dict[int, int]] = None, skip_bad: bool = False) -> None:
        recs = verify_images(records, skip_bad=True) if skip_bad else list(records)
        if pid_to_label is not None:
            missing = sorted({r.pid for r in recs} - pid_to_label.keys())
            if missing:
                raise ValueError(f"pid_to_label has no label for pids {missing[:10]}"
                                 f"{' ...' if len(missing) > 10 else ''}")
        self.records = recs
        self.transform = transform
        self.pid_to_label = pid_to_label

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        """The label of every kept record, in order (e.g. for :class:`~reidloop.data.sampler.PKSampler`)."""
        if self.pid_to_label is None:
            return [r.pid for r in self.records]
        return [self.pid_to_label[r.pid] for r in self.records]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        rec = self.records[index]
        img = load_image(rec.path)
        tensor = self.transform(img) if self.transform is not None else to_tensor(img)
        label = self.pid_to_label[rec.pid] if self.pid_to_label is not None else rec.pid
        return tensor, label, rec.camid, index
