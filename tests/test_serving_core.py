"""The Ray-free serving core: decoding with limits, multipart, forms, the gallery index,
checkpoint following and the per-replica service with its atomic model swap."""
import contextlib
import io
import os

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from urllib3.filepost import encode_multipart_formdata

from reidloop.config import ConfigError, from_dict, load_config
from reidloop.config.serve import ServeConfig
from reidloop.data.transforms import build_transforms
from reidloop.engine.features import extract_features
from reidloop.engine.precision import checked_precision, resolve_precision
from reidloop.metrics.distance import pairwise_distance
from reidloop.models import load_checkpoint
from reidloop.serving import (MAX_JSON_DEPTH, RELOAD_ERRORS, CheckpointError, CheckpointFollower, GalleryEntry,
                              GalleryIndex, InputTransform, ReidService, ServingError, decode_image, load_serving_model,
                              make_entry, parse_id_list, parse_json, parse_k, parse_meta, parse_multipart, parse_upload,
                              redact_paths, resolve_checkpoint)

from conftest import encode_image, write_checkpoint

H, W = 32, 16
CPU = torch.device("cpu")


def random_png(seed: int, h: int = 40, w: int = 20) -> bytes:
    return encode_image(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@contextlib.contextmanager
def errors_with(status: int, fragment: str):
    """Expect a ServingError whose message matches ``fragment`` and whose HTTP status is ``status``."""
    with pytest.raises(ServingError, match=fragment) as info:
        yield
    assert info.value.status == status, (info.value.status, str(info.value))


# ---------------------------------------------------------------- images
def test_input_transform_equals_the_offline_transform_bit_for_bit():
    t = InputTransform(H, W)
    img = Image.open(io.BytesIO(random_png(0, 70, 33))).convert("RGB")
    x = t.resize(img)
    assert x.dtype == torch.uint8 and x.shape == (3, H, W)
    assert torch.equal(t.normalize(x[None])[0], build_transforms(H, W, train=False)(img))


@pytest.mark.parametrize("data, status, fragment", [
    (b"", 400, "empty"),
    (b"%PDF-1.4 not an image", 400, "not an image in a supported format"),
    (random_png(1)[:60], 400, "truncated or corrupt"),
    (encode_image(np.zeros((600, 600, 3), np.uint8)), 413, "360000 pixels exceed the limit of 100000"),
    (encode_image(np.zeros((8, 8, 3), np.uint8), "GIF"), 400, "not an image in a supported format"),
])
def test_decode_rejects_bad_images_with_their_status(data, status, fragment):
    with errors_with(status, fragment):
        decode_image(data, max_pixels=100_000, what="upload")


def test_decode_accepts_jpeg_and_grey_png_as_rgb():
    assert decode_image(encode_image(np.full((10, 6, 3), 128, np.uint8), "JPEG"), max_pixels=100).mode == "RGB"
    grey = io.BytesIO()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(grey, "PNG")
    assert decode_image(grey.getvalue(), max_pixels=100).size == (4, 5)


# ---------------------------------------------------------------- multipart and forms
def encoded(files, data=None):
    req = requests.Request("POST", "http://127.0.0.1/", files=files, data=data).prepare()
    return req.body, req.headers["Content-Type"]


def test_multipart_round_trip_keeps_binary_data_exactly():
    blob = os.urandom(3000) + b"\r\n--\r\n\r\n" + os.urandom(100)
    body, ctype = encoded({"image": ("a b.png", blob, "image/png")}, {"k": "7"})
    parts = parse_multipart(body, ctype)
    assert [(p.name, p.filename) for p in parts] == [("k", None), ("image", "a b.png")]
    assert parts[1].data == blob and parts[1].content_type == "image/png" and parts[0].text() == "7"


@pytest.mark.parametrize("body, ctype, fragment", [
    (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n", "multipart/form-data; boundary=x", "closing"),
    (b"--x\r\n\r\n", "multipart/form-data", "no boundary"),
    (b"--x\r\nno header end--x--\r\n", "multipart/form-data; boundary=x", "closing"),
    (b"--x\r\nContent-Type: text/plain\r\n\r\n1\r\n--x--\r\n", "multipart/form-data; boundary=x", "form-data; name"),
])
def test_malformed_multipart_is_a_400(body, ctype, fragment):
    with errors_with(400, fragment):
        parse_multipart(body, ctype)


def test_urllib3_body_with_two_images_and_a_field_parses_to_its_parts():
    pngs = [random_png(3), random_png(4)]
    body, ctype = encode_multipart_formdata([("image", ("a.png", pngs[0], "image/png")),
                                             ("image", ("b.png", pngs[1], "image/png")),
                                             ("meta", '[{"person_id": 1}, {}]')])
    parts = parse_multipart(body, ctype)
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("image", "a.png", "image/png"), ("image", "b.png", "image/png"), ("meta", None, None)]
    assert [p.data for p in parts[:2]] == pngs and parts[2].text() == '[{"person_id": 1}, {}]'
    up = parse_upload(body, ctype, {}, allowed_fields=("meta",), max_files=2)
    assert up.files == [("image[0] a.png", pngs[0]), ("image[1] b.png", pngs[1])]
    assert up.fields == {"meta": '[{"person_id": 1}, {}]'}


def one_part(head: bytes, data: bytes = b"7") -> tuple[bytes, str]:
    return b"--x\r\n" + head + b"\r\n\r\n" + data + b"\r\n--x--\r\n", "multipart/form-data; boundary=x"


def test_part_headers_in_any_case_with_extra_headers_and_quoted_or_rfc2231_filenames():
    head = (b'content-disposition: FORM-DATA; name="image"; filename="f\\"o;.png"\r\nX-Trace: 1\r\n'
            b"Content-Length: 1\r\nCONTENT-TYPE:image/png \r\nContent-Transfer-Encoding: binary")
    [p] = parse_multipart(*one_part(head))
    assert (p.name, p.filename, p.content_type, p.data) == ("image", 'f"o;.png', "image/png", b"7")
    for disposition, filename in ((b"form-data; name=image; filename*=UTF-8''%C3%A4%20b.png", "\u00e4 b.png"),
                                  ('form-data; name="image"; filename="\u00e4.png"'.encode(), "\u00e4.png")):
        assert parse_multipart(*one_part(b"Content-Disposition: " + disposition))[0].filename == filename
    with errors_with(400, "part 0 has a folded header line"):  # obsolete line folding
        parse_multipart(*one_part(b'Content-Disposition: form-data;\r\n name="image"; filename="a.png"'))


def test_truncated_multipart_is_a_400_wherever_it_is_cut():
    body, ctype = encoded({"image": ("a.png", random_png(5), "image/png")}, {"k": "3"})
    assert len(parse_multipart(body, ctype)) == 2
    boundary = ctype.split("boundary=")[1]
    for end in (10, body.index(b"\r\n\r\n") + 1, body.index(b"image/png") + 4, len(body) // 2, len(body) - 5):
        with errors_with(400, f"no closing boundary '--{boundary}--'"):
            parse_multipart(body[:end], ctype)
    with errors_with(400, "no part before its closing boundary"):
        parse_multipart(f"--{boundary}--\r\n".encode(), ctype)


def test_parse_upload_forms_and_their_errors():
    png = random_png(2)
    up = parse_upload(*encoded({"image": ("a.png", png, "image/png")}, {"k": "3"}), {}, allowed_fields=("k",))
    assert up.files == [("image[0] a.png", png)] and up.fields == {"k": "3"}
    raw = parse_upload(png, "image/png; q=1", {"k": "4"}, allowed_fields=("k",))
    assert raw.files == [("body", png)] and raw.fields == {"k": "4"}
    many = [("image", ("a.png", png, "image/png"))] * 3
    assert len(parse_upload(*encoded(many), {}, max_files=3).files) == 3
    cases = [
        ((b"", "image/png", {}), {}, 400, "empty request body"),
        ((png, "application/json", {}), {}, 415, "not an image type"),
        ((png, None, {}), {}, 415, "missing"),
        ((*encoded({"photo": ("a.png", png, "image/png")}), {}), {}, 422, "not expected; send images in field"),
        ((*encoded({"image": ("a.txt", png, "text/plain")}), {}), {}, 415, "not an image type"),
        ((*encoded({"image": ("a.png", png)}), {"x": "1"}), {}, 422, "unknown parameter 'x'"),
        ((*encoded(many), {}), {"max_files": 2}, 422, "at most 2 images, got 3"),
        ((*encoded(many[:2]), {}), {}, 422, "expected one image, got 2"),
    ]
    for args, kw, status, fragment in cases:
        with errors_with(status, fragment):
            parse_upload(*args, **kw)


def test_parameter_parsers():
    assert parse_k(None, 20) == 10 and parse_k("", 5) == 5 and parse_k("20", 20) == 20
    for raw, fragment in (("0", "out of range"), ("21", "out of range"), ("1.5", "expected an integer")):
        with errors_with(422, fragment):
            parse_k(raw, 20)
    entries = parse_meta('[{"gallery_id": "a", "person_id": 3}, {"camera": "2"}]', 2)
    assert entries[0] == GalleryEntry("a", 3, None) and entries[1].camera == 2 and len(entries[1].gallery_id) == 16
    assert [e.person_id for e in parse_meta(None, 3)] == [None] * 3
    for raw, fragment in (("[{}]", "list of 2"), ("{", "not valid JSON"), ('[{"pid": 1}, {}]', "unknown key 'pid'"),
                          ('[{"person_id": true}, {}]', "meta\\[0\\].person_id")):
        with errors_with(422, fragment):
            parse_meta(raw, 2)
    assert parse_id_list(b'["a", "b"]') == ["a", "b"] and parse_id_list(b'{"ids": ["c"]}') == ["c"]
    for raw in (b"", b"[]", b"[1]", b'"a"', b"\xff"):
        with errors_with(422, "body"):
            parse_id_list(raw)
    with errors_with(422, "gallery_id"):
        make_entry("has space")


def nested(depth: int, inner: str = '"a"', closed: bool = True) -> str:
    return "[" * depth + inner + ("]" * depth if closed else "")


def test_json_of_any_depth_is_a_422_never_a_recursion_error():
    deep = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    for raw in (nested(100_000, "", closed=False), nested(100_000), nested(MAX_JSON_DEPTH + 1), "[" * 500 + "]" * 500,
                '{"a": ' * 1000 + "1" + "}" * 1000, f'[{{"ids": {nested(MAX_JSON_DEPTH)}}}]'):
        for parse in (lambda r: parse_id_list(r.encode()), lambda r: parse_meta(r, 1)):
            with errors_with(422, deep):
                parse(raw)
    assert parse_json(nested(MAX_JSON_DEPTH - 1, "[]"), "x") is not None  # exactly the limit is fine
    # valid JSON within the limit but of the wrong shape, and invalid JSON: the usual messages
    with errors_with(422, "expected a non-empty JSON list of gallery ids"):
        parse_id_list(nested(20).encode())
    with errors_with(422, "meta: expected a JSON list of 1 objects"):
        parse_meta(nested(20), 1)
    for raw in (b"[" * 20 + b"}", b"1" * 5000, b'["' + b"[" * 100):  # 5000 digits: int() refuses them
        with errors_with(422, "body: not valid JSON"):
            parse_id_list(raw)
    # brackets inside strings do not nest, and many shallow objects are fine
    assert parse_id_list(b'["' + b"[" * 1000 + b'"]') == ["[" * 1000]
    assert len(parse_meta("[" + ", ".join(['{"person_id": 1}'] * 64) + "]", 64)) == 64


def test_redact_paths_leaves_no_rooted_path():
    value = {"weights": "/data/weights/resnet.pth", "home": "~/x.pt", "win": "C:\\ckpt\\m.pt",
             "msg": "cannot read '/srv/runs/a/model.pt' (errno 2)", "/etc/key": ["see /tmp/x.", 1, None],
             "name": "image[0] /srv/up/a.png: not an image", "url": "from http://host/x/y",
             "kept": ["image/png", "cpu/bf16+channels_last", "1/2", "a / b", "relative/model.pt", "model.pt"]}
    out = redact_paths(value)
    assert out == {"weights": "<path>", "home": "<path>", "win": "<path>", "msg": "cannot read '<path>' (errno 2)",
                   "<path>": ["see <path>.", 1, None], "name": "image[0] <path>: not an image",
                   "url": "from http:<path>", "kept": value["kept"]}


# ---------------------------------------------------------------- gallery index
def test_gallery_search_matches_brute_force_and_snapshots_are_isolated():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 8)).astype(np.float32)
    entries = [GalleryEntry(f"g{i}", i % 5, i % 2) for i in range(30)]
    empty = GalleryIndex.empty(8)
    assert empty.search(feats[:2], 3) == [[], []]
    index = empty.add(entries[:20], feats[:20], "v1").add(entries[20:], feats[20:], "v1")
    assert index.size == 30 and empty.size == 0 and index.versions == ("v1",) * 30
    q = rng.normal(size=(4, 8)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        res = index.search(q, [1, 5, 30, 50], metric)
        d = pairwise_distance(q, feats, metric)
        for row, matches in zip(d, res):
            order = np.argsort(row, kind="stable")
            assert [m["gallery_id"] for m in matches] == [f"g{i}" for i in order[:len(matches)]]
            np.testing.assert_allclose([m["distance"] for m in matches], row[order[:len(matches)]], rtol=1e-5)
        assert [len(m) for m in res] == [1, 5, 30, 30]
    top = index.search(feats[7:8], 1)[0][0]
    assert top == {"gallery_id": "g7", "person_id": 2, "camera": 1, "distance": pytest.approx(0, abs=1e-2),
                   "score": pytest.approx(1, abs=1e-2), "model_version": "v1"}

    smaller = index.remove(["g7", "g0"])
    assert smaller.size == 28 and "g7" not in smaller and "g7" in index
    assert index.search(feats[7:8], 1)[0][0]["gallery_id"] == "g7"  # the old snapshot still sees it
    np.testing.assert_array_equal(smaller.features, np.delete(feats, [0, 7], axis=0))
    grown = smaller.add([GalleryEntry("new")], feats[:1], "v1")
    np.testing.assert_array_equal(smaller.features, np.delete(feats, [0, 7], axis=0))  # untouched by the add
    assert grown.search(feats[:1], 1)[0][0]["gallery_id"] == "new"


def test_gallery_errors_leave_it_unchanged():
    index = GalleryIndex.empty(2).add([GalleryEntry("a"), GalleryEntry("b")], np.eye(2), "v")
    with errors_with(409, "already in use.*'a'"):
        index.add([GalleryEntry("a")], np.zeros((1, 2)), "v")
    with errors_with(409, "'c'"):
        index.add([GalleryEntry("c"), GalleryEntry("c")], np.zeros((2, 2)), "v")
    with errors_with(404, "unknown gallery_id: \\['zz'\\]"):
        index.remove(["a", "zz"])
    with errors_with(507, "max_gallery_size=2"):
        index.add([GalleryEntry("c")], np.zeros((1, 2)), "v", max_size=2)
    with pytest.raises(ValueError, match="dim 3"):
        index.add([GalleryEntry("c")], np.zeros((1, 3)), "v")
    assert index.size == 2 and [e.gallery_id for e in index.entries] == ["a", "b"]


# ---------------------------------------------------------------- checkpoints
def test_resolve_and_follow_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "strategy.pt").write_bytes(b"1")  # a run's other .pt files are not Re-ID checkpoints
    with pytest.raises(FileNotFoundError, match="holds none of model.pt, pretrained.pt"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "pretrained.pt").write_bytes(b"2")
    assert resolve_checkpoint(tmp_path).name == "pretrained.pt"  # before the loop's first round
    (tmp_path / "model.pt").write_bytes(b"3")
    assert resolve_checkpoint(tmp_path).name == "model.pt"  # the latest model wins
    assert resolve_checkpoint(tmp_path / "strategy.pt").name == "strategy.pt"  # a file is taken as given

    follower = CheckpointFollower(tmp_path)
    path, fp = follower.poll()
    follower.mark_tried(fp)
    assert follower.poll() is None
    (tmp_path / ".tmp").write_bytes(b"44")
    os.replace(tmp_path / ".tmp", tmp_path / "model.pt")  # atomic rewrite, as save_checkpoint does
    assert follower.poll()[0] == path
    follower.follow(tmp_path / "pretrained.pt")
    assert follower.poll()[0].name == "pretrained.pt"


def test_load_serving_model_reports_bad_checkpoints(tmp_path):
    precision, t = resolve_precision("off", CPU), InputTransform(H, W)
    write_checkpoint(tmp_path / "ok.pt", 0, round=3, mAP=0.5, curve=torch.arange(3), nan=float("nan"))
    m = load_serving_model(tmp_path / "ok.pt", precision, t)
    assert m.dim == 512 and len(m.version) == 12 and m.metrics == {"round": 3, "mAP": 0.5, "curve": [0, 1, 2],
                                                                    "nan": None}
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint") as info:  # a ValueError
        load_serving_model(tmp_path / "junk.pt", precision, t)
    assert info.value.code == "checkpoint_unreadable"
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=True)
    ckpt["config"]["backbone"] = "mobilenet_v2"  # weights of one architecture, config of another
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="wrong.pt: checkpoint does not match its config") as info:
        load_serving_model(tmp_path / "wrong.pt", precision, t)
    assert info.value.code == "checkpoint_mismatch" and info.value.code in RELOAD_ERRORS


# ---------------------------------------------------------------- the per-replica service
@pytest.fixture
def service_cfg(tmp_path):
    write_checkpoint(tmp_path / "model.pt", 0, round=0)
    return ServeConfig(checkpoint=str(tmp_path), height=H, width=W, amp="auto", torch_threads=None)


def test_service_embeds_like_the_offline_extractor(service_cfg, synthetic_tiny):
    recs = synthetic_tiny.gallery[:6]
    svc = ReidService(service_cfg)
    t = InputTransform(H, W)
    images = [t(open(r.path, "rb").read(), max_pixels=10_000) for r in recs]
    got, version = svc.embed(images)
    model, _ = load_checkpoint(os.path.join(service_cfg.checkpoint, "model.pt"))
    want = extract_features(model, recs, height=H, width=W, precision=resolve_precision("auto", CPU), progress=False)
    assert version == svc.version_info()["model_version"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_forced_bf16_service_stays_within_bf16_tolerance(service_cfg, synthetic_tiny):
    recs = synthetic_tiny.gallery[:4]
    service_cfg.amp = "bf16"
    svc = ReidService(service_cfg)
    t = InputTransform(H, W)
    got, _ = svc.embed([t(open(r.path, "rb").read(), max_pixels=10_000) for r in recs])
    model, _ = load_checkpoint(os.path.join(service_cfg.checkpoint, "model.pt"))
    want = extract_features(model, recs, height=H, width=W, precision=resolve_precision("off", CPU), progress=False)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99
    # bf16 as asked, unless autocast is wrong for this model at this size on this CPU (then fp32, and
    # /version says so): torch 2.14.1's oneDNN bf16 conv fails on AMX at 32x16 (tests/test_precision.py)
    effective = checked_precision(resolve_precision("bf16", CPU), model, H, W).describe()
    assert svc.version_info()["precision"] == effective in ("cpu/bf16+channels_last", "cpu/fp32+channels_last")


def rooted_strings(value, roots=()) -> list[str]:
    """Every string in ``value`` (keys too) that starts a rooted path or holds one of ``roots``."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in rooted_strings(k, roots) + rooted_strings(v, roots)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in rooted_strings(v, roots)]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or any(r in value for r in roots)):
        return [value]
    return []


def test_reload_swaps_model_and_gallery_together_and_survives_bad_checkpoints(service_cfg, synthetic_tiny):
    service_cfg.keep_images = True  # the new model re-embeds the gallery from the kept uploads
    svc = ReidService(service_cfg)
    roots = (service_cfg.checkpoint, os.path.dirname(service_cfg.checkpoint))
    t = InputTransform(H, W)
    recs = synthetic_tiny.gallery[:5]
    raw = [open(r.path, "rb").read() for r in recs]
    images = [t(b, max_pixels=10_000) for b in raw]
    svc.add([GalleryEntry(f"g{i}", r.pid, r.camid) for i, r in enumerate(recs)], images, raw)
    old = svc.state
    assert svc.reload() is False  # nothing changed

    ckpt = os.path.join(service_cfg.checkpoint, "model.pt")
    write_checkpoint(ckpt, 1, round=1)
    assert svc.reload() is True
    new = svc.state
    assert new.model.version != old.model.version and new.model.metrics == {"round": 1}
    np.testing.assert_allclose(new.index.features, new.model.embed(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(old.index.features, old.model.embed(images), rtol=1e-5, atol=1e-5)  # old snapshot intact
    matches, version, size, stale = svc.search(images[2:3], [1])
    assert matches[0][0]["gallery_id"] == "g2" and version == new.model.version and size == 5 and stale == 0
    assert matches[0][0]["model_version"] == new.model.version

    with open(ckpt + ".tmp", "wb") as fh:
        fh.write(b"corrupt")
    os.replace(ckpt + ".tmp", ckpt)
    assert svc.reload() is False and svc.state is new
    info = svc.version_info()
    assert info["last_error"]["code"] == "checkpoint_unreadable" and info["model_version"] == new.model.version
    assert info["last_error"]["checkpoint_name"] == "model.pt" and info["last_error"]["at"] >= new.model.loaded_at
    assert svc.reload() is False and svc.version_info()["last_error"] == info["last_error"]  # not retried
    assert rooted_strings(info, roots) == []

    other = os.path.join(service_cfg.checkpoint, "other.pt")
    write_checkpoint(other, 2, round=2, weights=str(other), note=f"initialised from {other}")
    assert svc.reload(other) is True  # what reconfigure(user_config) does
    info = svc.version_info()
    assert info["last_error"] is None and info["checkpoint_name"] == "other.pt"
    assert info["metrics"] == {"round": 2, "weights": "<path>", "note": "initialised from <path>"}
    assert svc.reload(os.path.join(service_cfg.checkpoint, "missing", "missing.pt")) is False
    info = svc.version_info()
    assert info["last_error"]["code"] == "checkpoint_missing" and info["last_error"]["checkpoint_name"] == "missing.pt"
    assert info["checkpoint_name"] == "other.pt" and rooted_strings(info, roots) == []
    assert set(info) == {"model_version", "checkpoint_id", "checkpoint_name", "metrics", "loaded_at", "dim",
                         "precision", "swaps", "last_error", "stale", "reembedding"}
    assert svc.search(images[4:5], [1])[0][0][0]["gallery_id"] == "g4"
    state = svc.remove(["g4", "g0"])
    assert state.index.size == 3 and svc.search(images[4:5], [3])[0][0][0]["gallery_id"] != "g4"


def test_service_needs_a_loadable_checkpoint_at_start(tmp_path):
    with pytest.raises(ValueError, match="checkpoint: required"):
        ReidService(ServeConfig(height=H, width=W))
    with pytest.raises(FileNotFoundError, match="holds none of model.pt"):
        ReidService(ServeConfig(checkpoint=str(tmp_path), height=H, width=W))


# ---------------------------------------------------------------- config
def test_serve_config_file_and_validation(tmp_path):
    cfg = load_config(ServeConfig, "tune_configs/serve.yaml")
    assert cfg.host == "127.0.0.1" and cfg.amp == "auto" and cfg.batching
    opts = cfg.ingress.serve_options()  # the ingress embeds: it is what scales
    assert "autoscaling_config" in opts and "num_replicas" not in opts and opts["ray_actor_options"]["num_cpus"] == 1
    assert cfg.gallery.serve_options()["num_replicas"] == 1
    for overrides, fragment in ((["gallery.num_replicas=2"], "must be 1"),
                                (["max_in_flight=4", "ingress.max_ongoing_requests=4"], "so batches can fill"),
                                (["ingress.max_ongoing_requests=4"], "max_in_flight"),
                                (["ingress.autoscaling={max_replicas: 2, bogus: 1}"], "unknown keys"),
                                (["port=70000"], "port"), (["amp=half"], "amp"),
                                # the Embedder deployment of earlier versions: say where its settings went
                                (["embedder.num_replicas=2"], r"embedder: the Embedder deployment is gone.* move "
                                                              r"its settings to ingress")):
        with pytest.raises(ConfigError, match=fragment):
            load_config(ServeConfig, "tune_configs/serve.yaml", overrides)
    with pytest.raises(ConfigError, match=r"^embedder: the Embedder deployment is gone"):
        from_dict(ServeConfig, {"embedder": {"num_replicas": 2}})
