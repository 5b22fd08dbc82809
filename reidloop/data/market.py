"""Market-1501 and DukeMTMC-reID readers (the standard torchreid / fast-reid protocol).

Folders ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` (the gallery); file names
``PPPP_cC...`` (Market ``0002_c1s1_000451_03.jpg``, Duke ``0001_c2_f0046182.jpg``). Junk images
(pid -1) are dropped everywhere; distractors (pid 0) stay in the gallery only; camid = C - 1.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from .images import list_images, require_dir
from .records import DatasetError, ImageRecord, ReidSplits

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d)")
SUBDIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
FOLDER_NAMES = {
    "market1501": ("Market-1501-v15.09.15", "market1501", "Market-1501"),
    "dukemtmc": ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc"),
}
JUNK_PID = -1
DISTRACTOR_PID = 0


def resolve_root(root: str | Path, folder_names: tuple[str, ...], marker: str) -> Path:
    """The dataset folder: ``root`` if it holds ``marker``, else ``root/<name>`` for the first
    conventional name that does; ``root`` itself when none does (the caller then names what is missing)."""
    base = require_dir(root, "dataset root")
    for cand in (base, *(base / name for name in folder_names)):
        if (cand / marker).exists():
            return cand
    return base


def parse_name(path: Path) -> tuple[int, int] | None:
    """(pid, camid 0-based) from a Market/Duke file name, or None if it does not follow the pattern."""
    m = NAME_PATTERN.match(path.name)
    if m is None or int(m.group(1)) < JUNK_PID or int(m.group(2)) < 1:
        return None
    return int(m.group(1)), int(m.group(2)) - 1


def _read_folder(folder: Path, keep_distractors: bool, skip_bad: bool) -> tuple[list[ImageRecord], int]:
    """Records of one folder (sorted by path) and the number of junk / distractor images dropped."""
    records, dropped = [], 0
    for f in list_images(folder):
        parsed = parse_name(f)
        if parsed is None:
            msg = f"{f}: file name does not match '<pid>_c<camera>...' ({NAME_PATTERN.pattern})"
            if not skip_bad:
                raise DatasetError(msg)
            log.warning("skipping %s", msg)
            continue
        pid, camid = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            dropped += 1
            continue
        records.append(ImageRecord(str(f), pid, camid))
    return records, dropped


def read_market_style(root: str | Path, name: str, skip_bad: bool = False) -> ReidSplits:
    """Read a Market-1501-layout dataset; ``name`` is "market1501" or "dukemtmc".

    ``root`` is the dataset folder or its parent holding it under a conventional name.
    ``skip_bad``: log and skip files whose name does not match instead of raising DatasetError.
    """
    if name not in FOLDER_NAMES:
        raise ValueError(f"name: {name!r} is not one of {sorted(FOLDER_NAMES)}")
    base = resolve_root(root, FOLDER_NAMES[name], SUBDIRS["train"])
    subsets, dropped = {}, {}
    for subset, sub in SUBDIRS.items():
        folder = require_dir(base / sub, f"{subset} folder of {name}")
        subsets[subset], dropped[subset] = _read_folder(folder, subset == "gallery", skip_bad)
    splits = ReidSplits(name, subsets["train"], subsets["query"], subsets["gallery"],
                        meta={"root": str(base), "protocol": "standard (junk pid -1 dropped, "
                              "distractor pid 0 kept in gallery only)", "dropped_junk_or_distractors": dropped})
    splits.check_nonempty(str(base))
    return splits


def read_market1501(root: str | Path, skip_bad: bool = False) -> ReidSplits:
    return read_market_style(root, "market1501", skip_bad)


def read_dukemtmc(root: str | Path, skip_bad: bool = False) -> ReidSplits:
    return read_market_style(root, "dukemtmc", skip_bad)
