"""CUHK03 (labelled boxes) as laid out in shared/data/cuhk03/labeled — NOT the standard protocol split.

``train/`` and ``val/`` hold ``PPPP_NN.jpg``: ``PPPP`` the identity within the folder (numbering
restarts in each folder), ``NN`` 00–04 camera A (camid 0), 05–09 camera B (camid 1).
Train = ``train/``. Query / gallery come from ``val/``: for each identity and camera one image,
chosen with the seed, is a query and all other images are the gallery; a camera whose query would
leave another query without a cross-camera gallery match gives none (see ``split_query_gallery``),
so every query has a cross-camera match. Val pids are offset by ``VAL_PID_OFFSET`` to stay
distinct from train pids.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .images import list_images, require_dir
from .records import DatasetError, ImageRecord, ReidSplits

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^(\d+)_(\d{2})\.[A-Za-z]+$")
VAL_PID_OFFSET = 100_000
SLOTS_PER_CAMERA = 5
NOTE = "not the standard CUHK03 protocol split"


def _resolve(root: str | Path) -> Path:
    base = require_dir(root, "dataset root")
    if not (base / "train").exists() and (base / "labeled").is_dir():
        return base / "labeled"
    return base


def _read_folder(folder: Path, pid_offset: int, skip_bad: bool) -> list[ImageRecord]:
    records = []
    for f in list_images(folder):
        m = NAME_PATTERN.match(f.name)
        if m is None or int(m.group(2)) >= 2 * SLOTS_PER_CAMERA:
            msg = f"{f}: file name does not match 'PPPP_NN.jpg' with NN in 00..09"
            if not skip_bad:
                raise DatasetError(msg)
            log.warning("skipping %s", msg)
            continue
        records.append(ImageRecord(str(f), int(m.group(1)) + pid_offset, int(m.group(2)) // SLOTS_PER_CAMERA))
    return records


def split_query_gallery(records: list[ImageRecord], seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """One query per (identity, camera), drawn with ``seed``; the rest is the gallery.

    A camera gives no query where that would leave some query of the identity without a
    gallery image from another camera (e.g. an identity with a single camera-B image keeps it
    in the gallery as the match of its camera-A query; one seen by one camera gives no query).
    """
    groups: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(records):
        groups[r.pid][r.camid].append(i)
    rng = np.random.default_rng(seed)
    chosen, no_query = set(), []
    for pid in sorted(groups):
        remaining = {cam: len(members) for cam, members in groups[pid].items()}
        taken: list[int] = []
        for cam in sorted(remaining):
            trial = {**remaining, cam: remaining[cam] - 1}
            if all(sum(n for c, n in trial.items() if c != q) >= 1 for q in (*taken, cam)):
                remaining, taken = trial, [*taken, cam]
                members = groups[pid][cam]
                chosen.add(members[int(rng.integers(len(members)))])
        if not taken:
            no_query.append(pid)
    if no_query:
        log.warning("CUHK03 val: %d identities seen by one camera only go to the gallery: %s",
                    len(no_query), no_query[:10])
    query = [r for i, r in enumerate(records) if i in chosen]
    gallery = [r for i, r in enumerate(records) if i not in chosen]
    return query, gallery


def read_cuhk03(root: str | Path, seed: int = 0, skip_bad: bool = False) -> ReidSplits:
    """Read ``root`` (``.../cuhk03`` or ``.../cuhk03/labeled``); deterministic for ``seed``."""
    base = _resolve(root)
    train = _read_folder(require_dir(base / "train", "train folder of cuhk03"), 0, skip_bad)
    val = _read_folder(require_dir(base / "val", "val folder of cuhk03"), VAL_PID_OFFSET, skip_bad)
    query, gallery = split_query_gallery(val, seed)
    splits = ReidSplits("cuhk03", train, query, gallery, meta={
        "root": str(base), "note": NOTE, "seed": seed, "val_pid_offset": VAL_PID_OFFSET,
        "protocol": "train = train/; query = one image per (val identity, camera) drawn with the seed "
                    "(only where every query keeps a cross-camera match), gallery = the other val images; "
                    f"val pids are offset by {VAL_PID_OFFSET}"})
    splits.check_nonempty(str(base))
    return splits
