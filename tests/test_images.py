"""Image decoding, the Re-ID torch Dataset, relabelling and the transforms."""
from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from reidloop.data.images import ReidImageDataset, load_image, relabel, verify_images
from reidloop.data.records import DatasetError, ImageRecord
from reidloop.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

from conftest import write_image


def _truncated(path):
    good = write_image(path, h=32, w=16)
    data = open(good, "rb").read()
    open(good, "wb").write(data[: len(data) * 2 // 3])
    return good


def _text_as_jpg(path):
    path.write_text("this is not an image\n")
    return str(path)


def test_load_image_rgb_from_jpeg_and_grayscale_png(tmp_path):
    img = load_image(write_image(tmp_path / "a.jpg"))
    assert img.mode == "RGB" and img.size == (8, 16)
    gray = load_image(write_image(tmp_path / "g.png", mode="L"))
    assert gray.mode == "RGB" and gray.size == (8, 16)


@pytest.mark.parametrize("make", [_truncated, _text_as_jpg])
def test_load_image_bad_file_names_path(tmp_path, make):
    path = make(tmp_path / "bad.jpg")
    with pytest.raises(DatasetError, match="bad.jpg"):
        load_image(path)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.jpg.*does not exist"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [100, 50])  # 128 px: over the limit (our guard), over twice it (PIL's)
def test_load_image_pixel_limit(tmp_path, monkeypatch, limit):
    path = write_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DatasetError, match="big.png.*pixels"):
        load_image(path)


def _records(tmp_path):
    good1 = ImageRecord(write_image(tmp_path / "1.jpg"), 7, 0)
    bad = ImageRecord(_truncated(tmp_path / "2.jpg"), 7, 1)
    text = ImageRecord(_text_as_jpg(tmp_path / "3.jpg"), 9, 0)
    good2 = ImageRecord(write_image(tmp_path / "4.png", seed=1), 9, 1)
    return [good1, bad, text, good2]


def test_verify_images_raises_on_first_bad(tmp_path):
    recs = _records(tmp_path)
    with pytest.raises(DatasetError, match="2.jpg"):
        verify_images(recs)


def test_verify_images_skip_bad_logs_each(tmp_path, caplog):
    recs = _records(tmp_path)
    with caplog.at_level(logging.WARNING, logger="reidloop.data.images"):
        kept = verify_images(recs, skip_bad=True)
    assert kept == [recs[0], recs[3]]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "2.jpg" in logged and "3.jpg" in logged and "1.jpg" not in logged


def test_relabel_is_dense_and_ordered():
    recs = [ImageRecord("a", 42, 0), ImageRecord("b", 5, 1), ImageRecord("c", 42, 1), ImageRecord("d", 100000, 0)]
    assert relabel(recs) == {5: 0, 42: 1, 100000: 2}


def test_dataset_items_and_labels(tmp_path):
    recs = [r for i, r in enumerate(_records(tmp_path)) if i in (0, 3)]
    ds = ReidImageDataset(recs, build_transforms(32, 16, train=False), relabel(recs))
    assert len(ds) == 2
    x, label, camid, index = ds[1]
    assert x.shape == (3, 32, 16) and x.dtype == torch.float32
    assert (label, camid, index) == (1, 1, 1)
    raw = ReidImageDataset(recs)  # no transform / no map: [0, 1] tensor and the source pid
    x, label, _, _ = raw[0]
    assert x.shape == (3, 16, 8) and 0.0 <= x.min() and x.max() <= 1.0 and label == 7


def test_dataset_bad_image_raises_or_is_skipped(tmp_path):
    recs = _records(tmp_path)
    ds = ReidImageDataset(recs)
    with pytest.raises(DatasetError, match="2.jpg"):
        ds[1]
    skipped = ReidImageDataset(recs, skip_bad=True)
    assert [r.path for r in skipped.records] == [recs[0].path, recs[3].path]
    assert skipped[1][1] == 9 and skipped.labels == [7, 9]
    relabelled = ReidImageDataset(recs, pid_to_label=relabel(recs), skip_bad=True)
    assert len(relabelled) == 2 and relabelled.labels == [0, 1]


def test_dataset_unknown_pid_is_rejected(tmp_path):
    recs = [ImageRecord(write_image(tmp_path / "1.jpg"), 7, 0)]
    with pytest.raises(ValueError, match=r"\[7\]"):
        ReidImageDataset(recs, pid_to_label={8: 0})


def test_eval_transform_resizes_and_normalises(tmp_path):
    img = Image.new("RGB", (8, 16), (255, 0, 128))
    x = build_transforms(32, 16, train=False)(img)
    assert x.shape == (3, 32, 16) and type(x) is torch.Tensor
    expect = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expect, atol=1e-3)
    assert torch.equal(x, build_transforms(32, 16, train=False)(img))


def test_train_transform_is_random_with_right_shape(tmp_path):
    img = load_image(write_image(tmp_path / "a.jpg", h=32, w=16))
    tf = build_transforms(32, 16, train=True)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(8)]
    assert all(o.shape == (3, 32, 16) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    torch.manual_seed(0)
    assert torch.equal(outs[0], tf(img))


def test_transform_rejects_bad_size():
    with pytest.raises(ValueError, match="height/width"):
        build_transforms(0, 16, train=False)
