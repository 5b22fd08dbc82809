"""Dataset readers (Market-1501, DukeMTMC-reID, CUHK03, CUHK01), build_splits and split_identities."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from reidloop.config.schema import DataConfig, SyntheticConfig
from reidloop.data.cuhk01 import read_cuhk01
from reidloop.data.cuhk03 import VAL_PID_OFFSET, read_cuhk03
from reidloop.data.market import read_dukemtmc, read_market1501
from reidloop.data.records import DatasetError, ImageRecord, ReidSplits
from reidloop.data.registry import build_splits, split_identities

from conftest import write_image

REAL_CUHK03 = Path("/work/shared/data/cuhk03")


def _files(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in reversed(sorted(names)):  # creation order differs from name order
        write_image(folder / name)


# ---------------------------------------------------------------- Market-1501 / DukeMTMC-reID

MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c1s6_028546_01.jpg",
                           "0007_c3s3_064744_01.jpg", "0007_c6s3_088192_02.jpg", "-1_c1s1_000401_03.jpg",
                           "0000_c1s1_000000_01.jpg"],
    "query": ["0002_c3s1_000551_00.jpg", "0007_c2s3_070952_00.jpg"],
    "bounding_box_test": ["0002_c1s1_000801_01.jpg", "0002_c5s1_000401_03.jpg", "0007_c6s3_085567_02.jpg",
                          "0000_c1s1_000151_01.jpg", "0000_c4s6_001176_04.jpg", "-1_c1s1_000401_03.jpg",
                          "-1_c2s2_000651_01.jpg"],
}


def _market(root: Path, layout=MARKET) -> Path:
    for sub, names in layout.items():
        _files(root / sub, names)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")  # non-image files are ignored
    return root


def test_market_counts_pids_camids(tmp_path):
    s = read_market1501(_market(tmp_path / "Market-1501-v15.09.15"))
    assert isinstance(s, ReidSplits) and s.name == "market1501"
    assert len(s.train) == 5 and s.train_pids == [2, 7]  # junk and distractor never in train
    assert [(r.pid, r.camid) for r in s.query] == [(2, 2), (7, 1)]
    assert Counter(r.pid for r in s.gallery) == {0: 2, 2: 2, 7: 1}  # distractors stay, junk dropped
    assert all(r.pid != -1 for r in s.train + s.query + s.gallery)
    assert [r.camid for r in s.train] == [0, 1, 0, 2, 5]
    for subset in (s.train, s.query, s.gallery):
        assert [r.path for r in subset] == sorted(r.path for r in subset)
        assert all(os.path.isfile(r.path) for r in subset)
    assert s.meta["dropped_junk_or_distractors"] == {"train": 2, "query": 0, "gallery": 2}


@pytest.mark.parametrize("folder", ["Market-1501-v15.09.15", "market1501"])
def test_market_root_may_be_parent(tmp_path, folder):
    _market(tmp_path / folder)
    direct = read_market1501(tmp_path / folder)
    assert read_market1501(tmp_path) == direct


def test_duke_names(tmp_path):
    layout = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c8_f0047000.jpg", "0005_c1_f0001.jpg"],
              "query": ["0001_c5_f0050000.jpg"],
              "bounding_box_test": ["0001_c6_f0060000.jpg", "0009_c7_f0000001.jpg"]}
    _market(tmp_path / "DukeMTMC-reID", layout)
    s = read_dukemtmc(str(tmp_path))
    assert s.name == "dukemtmc"
    assert [(r.pid, r.camid) for r in s.train] == [(1, 1), (1, 7), (5, 0)]
    assert [(r.pid, r.camid) for r in s.gallery] == [(1, 5), (9, 6)]


def test_market_bad_name_raises_or_is_skipped(tmp_path, caplog):
    root = _market(tmp_path / "m")
    write_image(root / "query" / "person_c1.jpg")
    with pytest.raises(DatasetError, match="person_c1.jpg"):
        read_market1501(root)
    with caplog.at_level(logging.WARNING):
        s = read_market1501(root, skip_bad=True)
    assert len(s.query) == 2 and "person_c1.jpg" in caplog.text


def test_market_missing_root_and_subfolder(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*does not exist"):
        read_market1501(tmp_path / "nowhere")
    root = _market(tmp_path / "m")
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetError, match=r"m/query.*does not exist"):
        read_market1501(root)


def test_market_empty_split(tmp_path):
    layout = dict(MARKET, query=["-1_c1s1_000001_00.jpg"])  # only junk: empty after filtering
    root = _market(tmp_path / "m", layout)
    with pytest.raises(DatasetError, match="query split of market1501 is empty"):
        read_market1501(root)


# ---------------------------------------------------------------- CUHK03

def _cuhk03(root: Path) -> Path:
    lab = root / "labeled"
    _files(lab / "train", [f"{p:04d}_{n:02d}.jpg" for p in range(3) for n in (0, 1, 2, 5, 6)])
    val = [f"{p:04d}_{n:02d}.jpg" for p in range(3) for n in (0, 1, 3, 4, 5, 7, 9)]
    val += ["0003_00.jpg", "0003_01.jpg"]  # identity 3: camera A only -> gallery only
    val += ["0004_02.jpg", "0004_03.jpg", "0004_08.jpg"]  # identity 4: one camera-B image
    val += ["0005_04.jpg", "0005_05.jpg"]  # identity 5: one image per camera
    _files(lab / "val", val)
    return root


def test_cuhk03_splits(tmp_path):
    s = read_cuhk03(_cuhk03(tmp_path / "cuhk03"), seed=0)
    assert s.name == "cuhk03" and "not the standard CUHK03 protocol split" in s.meta["note"]
    assert s.meta["val_pid_offset"] == VAL_PID_OFFSET == 100000
    assert len(s.train) == 15 and s.train_pids == [0, 1, 2]
    assert Counter(r.camid for r in s.train) == {0: 9, 1: 6}
    off = VAL_PID_OFFSET
    # one query per (identity, camera) where each query keeps a cross-camera gallery match
    expected = [(off + p, c) for p in range(3) for c in (0, 1)] + [(off + 4, 0), (off + 5, 0)]
    assert sorted((r.pid, r.camid) for r in s.query) == sorted(expected)
    assert not {r.path for r in s.query} & {r.path for r in s.gallery}
    assert len(s.query) + len(s.gallery) == 28
    gallery = {(r.pid, r.camid) for r in s.gallery}
    assert all((q.pid, 1 - q.camid) in gallery for q in s.query)  # cross-camera match exists
    assert {r.pid for r in s.gallery} == {off + p for p in range(6)}
    assert not set(s.train_pids) & {r.pid for r in s.query + s.gallery}


def test_cuhk03_deterministic_for_seed(tmp_path):
    root = _cuhk03(tmp_path / "cuhk03")
    assert read_cuhk03(root, seed=3) == read_cuhk03(root / "labeled", seed=3)
    queries = {tuple(r.path for r in read_cuhk03(root, seed=seed).query) for seed in range(6)}
    assert len(queries) > 1


def test_cuhk03_errors(tmp_path):
    root = _cuhk03(tmp_path / "cuhk03")
    write_image(root / "labeled" / "val" / "0000_12.jpg")
    with pytest.raises(DatasetError, match="0000_12.jpg"):
        read_cuhk03(root)
    assert len(read_cuhk03(root, skip_bad=True).gallery) == 20
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty/val.*does not exist"):
        read_cuhk03(empty)
    (empty / "val").mkdir()
    with pytest.raises(DatasetError, match="train split of cuhk03 is empty"):
        read_cuhk03(empty)


@pytest.mark.skipif(not REAL_CUHK03.is_dir(), reason="shared CUHK03 data not present")
def test_real_cuhk03_counts():
    s = read_cuhk03(REAL_CUHK03, seed=0)
    assert len(s.train_pids) == 743 and len(s.train) == 7239
    assert len({r.pid for r in s.query}) == 100 and len({r.pid for r in s.gallery}) == 100
    assert len(s.query) + len(s.gallery) == 938 and len(s.query) == 199  # one identity has 1 camera-B image
    gallery = {(r.pid, r.camid) for r in s.gallery}
    assert all((q.pid, 1 - q.camid) in gallery for q in s.query)


# ---------------------------------------------------------------- CUHK01

def _cuhk01(root: Path, n_ids=7) -> Path:
    _files(root / "campus", [f"{p:04d}{n:03d}.png" for p in range(1, n_ids + 1) for n in (1, 2, 3, 4)])
    return root


def test_cuhk01_splits(tmp_path):
    root = _cuhk01(tmp_path / "CUHK01")
    s = read_cuhk01(root, seed=0)
    train_ids, test_ids = set(s.train_pids), {r.pid for r in s.query}
    assert len(train_ids) == 3 and len(test_ids) == 4 and not train_ids & test_ids
    assert len(s.train) == 12 and len(s.query) == 8 and len(s.gallery) == 8
    assert {r.pid for r in s.gallery} == test_ids
    assert all(r.camid == 0 for r in s.query) and all(r.camid == 1 for r in s.gallery)
    assert all(Path(r.path).name[4:7] in ("001", "002") for r in s.query)
    assert read_cuhk01(tmp_path, seed=0) == s == read_cuhk01(root / "campus", seed=0)
    assert len({tuple(read_cuhk01(root, seed=k).train_pids) for k in range(6)}) > 1


def test_cuhk01_reads_jpeg(tmp_path):
    """The shared copy of CUHK01 is JPEG: ``PPPPNNN.jpg`` reads exactly as the original PNG names do."""
    folder = tmp_path / "jpg" / "campus"
    _files(folder, [f"{p:04d}{n:03d}.jpg" for p in range(1, 8) for n in (1, 2, 3, 4)])
    s = read_cuhk01(tmp_path / "jpg", seed=0)
    png = read_cuhk01(_cuhk01(tmp_path / "png"), seed=0)
    assert len(s.train) == 12 and len(s.query) == 8 and len(s.gallery) == 8
    assert all(r.path.endswith(".jpg") for r in s.train + s.query + s.gallery)
    key = lambda split: [(r.pid, r.camid, Path(r.path).stem) for r in split]  # noqa: E731
    assert (key(s.train), key(s.query), key(s.gallery)) == (key(png.train), key(png.query), key(png.gallery))
    from reidloop.data.images import load_image

    assert load_image(s.query[0].path).size == (8, 16)


def test_cuhk01_errors(tmp_path):
    with pytest.raises(DatasetError, match="campus.*does not exist"):
        read_cuhk01(tmp_path)
    root = _cuhk01(tmp_path / "c", n_ids=2)
    write_image(root / "campus" / "0001005.png")
    with pytest.raises(DatasetError, match="0001005.png"):
        read_cuhk01(root)
    (root / "campus" / "0001005.png").unlink()
    for f in (root / "campus").glob("000[12]00[34].png"):
        f.unlink()  # no camera-B images left
    with pytest.raises(DatasetError, match="gallery split of cuhk01 is empty"):
        read_cuhk01(root)


# ---------------------------------------------------------------- registry

def test_build_splits_dispatch(tmp_path):
    _market(tmp_path / "market1501")
    _market(tmp_path / "DukeMTMC-reID")
    _cuhk03(tmp_path / "cuhk03")
    _cuhk01(tmp_path / "cuhk01")
    assert build_splits(DataConfig(dataset="market1501", root=str(tmp_path))).name == "market1501"
    assert build_splits(DataConfig(dataset="dukemtmc", root=str(tmp_path))).name == "dukemtmc"
    c3 = build_splits(DataConfig(dataset="cuhk03", root=str(tmp_path / "cuhk03"), seed=4))
    assert c3 == read_cuhk03(tmp_path / "cuhk03", seed=4)
    c1 = build_splits(DataConfig(dataset="cuhk01", root=str(tmp_path / "cuhk01"), seed=4))
    assert c1 == read_cuhk01(tmp_path / "cuhk01", seed=4)


def test_build_splits_passes_skip_bad_images(tmp_path):
    root = _market(tmp_path / "market1501")
    write_image(root / "query" / "junk.jpg")
    with pytest.raises(DatasetError, match="junk.jpg"):
        build_splits(DataConfig(dataset="market1501", root=str(root)))
    assert len(build_splits(DataConfig(dataset="market1501", root=str(root), skip_bad_images=True)).query) == 2


def test_build_splits_synthetic(tmp_path):
    pytest.importorskip("reidloop.data.synthetic")
    cfg = DataConfig(synthetic=SyntheticConfig(train_ids=2, test_ids=2, images_per_camera=1))
    assert isinstance(build_splits(cfg, cache_dir=str(tmp_path)), ReidSplits)


def test_split_identities():
    recs = [ImageRecord(f"{p}_{i}.jpg", p, i % 2) for p in range(10) for i in range(3)]
    a, b = split_identities(recs, 0.3, seed=1)
    ids_a, ids_b = {r.pid for r in a}, {r.pid for r in b}
    assert len(ids_a) == 3 and len(ids_b) == 7 and not ids_a & ids_b
    assert sorted(a + b, key=recs.index) == recs and a == sorted(a, key=recs.index)
    assert split_identities(list(reversed(recs)), 0.3, seed=1)[0] == list(reversed(a))
    assert len({frozenset(r.pid for r in split_identities(recs, 0.3, seed=k)[0]) for k in range(6)}) > 1
    assert split_identities(recs, 0.0, seed=0) == ([], recs)
    with pytest.raises(ValueError, match="fraction"):
        split_identities(recs, 1.5, seed=0)
