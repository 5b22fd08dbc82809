"""CUHK01 reader: ``campus/PPPPNNN.{png,jpg}``, 971 identities × 4 images (NNN 001–002 camera A, 003–004 camera B).

As in the DRAL paper (Sec. 4, Datasets), identities are split with the seed into 485 for training
and 486 for testing (generally ``n // 2`` and the rest); query = the test identities' camera-A
images, gallery = their camera-B images.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .images import list_images, require_dir
from .records import DatasetError, ImageRecord, ReidSplits

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^(\d{4})(\d{3})\.[A-Za-z]+$")
FOLDER_NAMES = ("CUHK01", "cuhk01")


def _resolve(root: str | Path) -> Path:
    base = require_dir(root, "dataset root")
    for cand in (base, *(base / name for name in FOLDER_NAMES)):
        if (cand / "campus").exists():
            return cand / "campus"
    if base.name == "campus":
        return base
    return require_dir(base / "campus", "campus folder of cuhk01")


def _read(folder: Path, skip_bad: bool) -> list[ImageRecord]:
    records = []
    for f in list_images(folder):
        m = NAME_PATTERN.match(f.name)
        if m is None or not 1 <= int(m.group(2)) <= 4:
            msg = f"{f}: file name does not match 'PPPPNNN.<png/jpg>' with NNN in 001..004"
            if not skip_bad:
                raise DatasetError(msg)
            log.warning("skipping %s", msg)
            continue
        records.append(ImageRecord(str(f), int(m.group(1)), (int(m.group(2)) - 1) // 2))
    return records


def read_cuhk01(root: str | Path, seed: int = 0, skip_bad: bool = False) -> ReidSplits:
    """Read ``root`` (the folder holding ``campus/``, or ``campus/`` itself); deterministic for ``seed``."""
    folder = _resolve(root)
    records = _read(folder, skip_bad)
    pids = np.array(sorted({r.pid for r in records}))
    train_ids = set(np.random.default_rng(seed).permutation(pids)[: len(pids) // 2].tolist())
    train = [r for r in records if r.pid in train_ids]
    query = [r for r in records if r.pid not in train_ids and r.camid == 0]
    gallery = [r for r in records if r.pid not in train_ids and r.camid == 1]
    splits = ReidSplits("cuhk01", train, query, gallery, meta={
        "root": str(folder), "seed": seed,
        "protocol": f"{len(train_ids)} train / {len(pids) - len(train_ids)} test identities drawn "
                    "with the seed; query = test camera A, gallery = test camera B"})
    splits.check_nonempty(str(folder))
    return splits
