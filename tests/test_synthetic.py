"""The built-in synthetic Re-ID set: layout, determinism, caching and that identity signal exists."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from reidloop.config.schema import SyntheticConfig
from reidloop.data.records import DatasetError
from reidloop.data.synthetic import SUBDIRS, config_hash, render_synthetic, synthetic_splits

TINY = dict(train_ids=6, test_ids=4, images_per_camera=2, cameras=2, height=32, width=16)
NAME = re.compile(r"^(\d{4})_c(\d)_(\d{4})\.png$")


def _pixels(records) -> np.ndarray:
    return np.stack([np.asarray(Image.open(r.path)) for r in records])


def _mtimes(splits) -> dict[str, int]:
    return {r.path: os.stat(r.path).st_mtime_ns for r in splits.train + splits.query + splits.gallery}


def test_files_are_real_pngs_in_market_layout(tmp_path):
    cfg = SyntheticConfig(**TINY)
    s = synthetic_splits(cfg, str(tmp_path))
    root = tmp_path / f"synthetic-{config_hash(cfg)}"
    assert s.meta["root"] == str(root) and (root / "DONE").is_file()
    for split, sub in SUBDIRS.items():
        recs = getattr(s, split)
        assert sorted(os.listdir(root / sub)) == sorted(os.path.basename(r.path) for r in recs)
        for r in recs:
            assert os.path.dirname(r.path) == str(root / sub)
            pid, cam, _ = NAME.match(os.path.basename(r.path)).groups()
            assert (int(pid), int(cam) - 1) == (r.pid, r.camid)
            with Image.open(r.path) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (16, 32)
    names = [os.path.basename(r.path) for r in s.train + s.query + s.gallery]
    assert len(set(names)) == len(names)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # the build folder was renamed away


def test_counts_pids_and_cameras(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cache_dir=None: under ./.cache
    s = synthetic_splits(SyntheticConfig(**TINY), None)
    assert s.meta["root"].startswith(str(tmp_path / ".cache" / "synthetic-"))
    assert len(s.train) == 6 * 2 * 2 and s.train_pids == [1, 2, 3, 4, 5, 6]
    assert {r.camid for r in s.train} == {0, 1}
    test_pids = {r.pid for r in s.query} | {r.pid for r in s.gallery}
    assert test_pids == {7, 8, 9, 10} and not test_pids & set(s.train_pids)
    # one query per id per camera, the other image of that id and camera in the gallery
    assert sorted((r.pid, r.camid) for r in s.query) == [(p, c) for p in range(7, 11) for c in (0, 1)]
    assert sorted((r.pid, r.camid) for r in s.gallery) == [(p, c) for p in range(7, 11) for c in (0, 1)]


@pytest.mark.parametrize("cameras,per_camera", [(2, 2), (3, 1), (3, 3)])
def test_query_gallery_disjoint_and_every_query_has_a_cross_camera_match(tmp_path, cameras, per_camera):
    cfg = SyntheticConfig(**{**TINY, "cameras": cameras, "images_per_camera": per_camera})
    s = synthetic_splits(cfg, str(tmp_path))
    assert not {r.path for r in s.query} & {r.path for r in s.gallery}
    assert len(s.query) + len(s.gallery) == 4 * cameras * per_camera
    for q in s.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in s.gallery), q


def test_deterministic_for_a_seed(tmp_path):
    a = synthetic_splits(SyntheticConfig(**TINY), str(tmp_path / "a"))
    b = synthetic_splits(SyntheticConfig(**TINY), str(tmp_path / "b"))
    c = synthetic_splits(SyntheticConfig(**TINY, seed=1), str(tmp_path / "c"))
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in a.query + a.gallery] == \
        [(os.path.basename(r.path), r.pid, r.camid) for r in b.query + b.gallery]
    pa = _pixels(a.train + a.query + a.gallery)
    assert np.array_equal(pa, _pixels(b.train + b.query + b.gallery))
    pc = _pixels(c.train + c.query + c.gallery)
    assert pa.shape == pc.shape and np.mean(pa != pc) > 0.5
    assert config_hash(SyntheticConfig(**TINY)) != config_hash(SyntheticConfig(**TINY, seed=1))


def test_cache_is_reused_and_rebuilt_when_incomplete(tmp_path):
    cfg = SyntheticConfig(**TINY)
    first = synthetic_splits(cfg, str(tmp_path))
    assert first.meta["generated"] is True
    before = _mtimes(first)
    again = synthetic_splits(cfg, str(tmp_path))
    assert again.meta["generated"] is False and _mtimes(again) == before
    assert again.query == first.query and again.gallery == first.gallery and again.train == first.train

    root = first.meta["root"]
    pixels = _pixels(first.query)
    os.remove(os.path.join(root, "DONE"))  # as if a writer died before the marker
    open(os.path.join(root, "stale.txt"), "w").close()
    rebuilt = synthetic_splits(cfg, str(tmp_path))
    assert rebuilt.meta["generated"] is True
    assert os.path.isfile(os.path.join(root, "DONE")) and not os.path.exists(os.path.join(root, "stale.txt"))
    assert np.array_equal(_pixels(rebuilt.query), pixels)

    os.remove(rebuilt.gallery[0].path)  # marker present but a file missing: rebuilt too
    assert synthetic_splits(cfg, str(tmp_path)).meta["generated"] is True
    assert os.path.isfile(rebuilt.gallery[0].path)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="SyntheticConfig"):
        synthetic_splits(TINY, str(tmp_path))  # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match=re.escape(str(blocker))):
        synthetic_splits(SyntheticConfig(**TINY), str(blocker))


def _descriptor(images: np.ndarray) -> np.ndarray:
    """Per-image standardised pixels, averaged over a 8x4 grid of regions."""
    x = images.astype(np.float32)
    x = (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-6)
    n, h, w, _ = x.shape
    return x.reshape(n, 8, h // 8, 4, w // 4, 3).mean((2, 4)).reshape(n, -1)


def test_identity_signal_exists_but_cross_camera_raw_pixels_are_imperfect():
    cfg = SyntheticConfig(train_ids=2, test_ids=16, images_per_camera=2, cameras=2, height=32, width=16)
    images, layout = render_synthetic(cfg)
    assert images.shape == (18 * 2 * 2, 32, 16, 3) and images.dtype == np.uint8
    assert images.std() > 20  # not blank

    d = _descriptor(images)
    dist = np.linalg.norm(d[:, None] - d[None], axis=-1)
    same = layout.pid[:, None] == layout.pid[None]
    cross = layout.cam[:, None] != layout.cam[None]
    pos, neg = dist[same & cross], dist[~same & cross]
    assert pos.mean() < 0.95 * neg.mean()
    assert np.mean(pos[:, None] < neg[None]) > 0.65  # AUC of the descriptor across cameras
    assert dist[same & ~np.eye(len(d), dtype=bool)].mean() < 0.95 * dist[~same].mean()

    # raw pixels: each camera-0 image against all camera-1 images
    q, g = layout.cam == 0, layout.cam == 1
    raw = images.reshape(len(images), -1).astype(np.float32)
    nearest = np.linalg.norm(raw[q][:, None] - raw[g][None], axis=-1).argmin(1)
    assert np.mean(layout.pid[g][nearest] == layout.pid[q]) < 0.5
