"""The durable gallery, stale entries after a swap, background re-embedding and access rules (Ray-free core)."""
import os
import threading

import numpy as np
import pytest

from reidloop.config import ConfigError
from reidloop.config.serve import ServeConfig
from reidloop.lease import LeaseHeld
from reidloop.serving import (ADMIN, READ, Access, GalleryEntry, GalleryStore, InputTransform, ReidService,
                              ServingError, StoreError, check_request_pixels, gallery_folder, redact_matches,
                              require_admin)
from reidloop.serving.access import TOKEN_ENV

from conftest import encode_image, write_checkpoint

H, W = 32, 16


def entries(n, start=0):
    return [GalleryEntry(f"g{i}", person_id=i % 3 or None, camera=i % 2) for i in range(start, start + n)]


# ---------------------------------------------------------------- the store alone
def test_store_replays_adds_and_removes_in_order_and_compacts(tmp_path):
    rng = np.random.default_rng(0)
    store = GalleryStore(tmp_path / "g", compact_every=3)
    feats = rng.normal(size=(10, 4)).astype(np.float32)
    store.add(entries(6), ["v1"] * 6, feats[:6])
    store.remove(["g1", "g4"])
    store.add([GalleryEntry("g1", 7, 0)], ["v2"], feats[6:7])  # an id removed, then added again
    assert store.needs_snapshot()
    loaded = store.load()
    assert [e.gallery_id for e in loaded.entries] == ["g0", "g2", "g3", "g5", "g1"]
    assert loaded.versions == ["v1"] * 4 + ["v2"] and loaded.entries[-1] == GalleryEntry("g1", 7, 0)
    np.testing.assert_array_equal(np.stack(loaded.features), feats[[0, 2, 3, 5, 6]])
    store.snapshot(loaded.entries, loaded.versions, np.stack(loaded.features))
    assert not store.needs_snapshot() and list((tmp_path / "g" / "parts").iterdir()) == []
    store.add([GalleryEntry("g9")], ["v2"], feats[9:10])
    store.close()

    again = GalleryStore(tmp_path / "g")  # a new server on the folder: the snapshot, then the part after it
    loaded = again.load()
    assert [e.gallery_id for e in loaded.entries] == ["g0", "g2", "g3", "g5", "g1", "g9"]
    np.testing.assert_array_equal(np.stack(loaded.features), feats[[0, 2, 3, 5, 6, 9]])
    again.close()


def test_store_has_one_writer_and_names_an_unreadable_part(tmp_path):
    store = GalleryStore(tmp_path / "g")
    store.add(entries(2), ["v"] * 2, np.zeros((2, 3)))
    with pytest.raises(LeaseHeld, match="being written by"):
        GalleryStore(tmp_path / "g", lease_wait_s=0)
    store.close()
    (tmp_path / "g" / "parts" / "0000000009.parquet").write_bytes(b"not parquet")
    reader = GalleryStore(tmp_path / "g")
    with pytest.raises(StoreError, match="0000000009.parquet: not a readable gallery part"):
        reader.load()
    reader.close()


def test_store_keeps_images_only_when_asked_and_sweeps_orphans(tmp_path):
    plain = GalleryStore(tmp_path / "a")
    plain.add(entries(1), ["v"], np.zeros((1, 2)), [b"bytes"])
    assert not (tmp_path / "a" / "images").exists() and plain.image("g0") is None
    plain.close()
    kept = GalleryStore(tmp_path / "b", keep_images=True)
    kept.add(entries(2), ["v"] * 2, np.zeros((2, 2)), [b"zero", b"one"])
    kept.remove(["g0"])
    assert kept.image("g0") is None and kept.image("g1") == b"one"
    (tmp_path / "b" / "images" / "orphan").write_bytes(b"x")  # an image whose part never landed (a crash)
    kept.close()
    again = GalleryStore(tmp_path / "b", keep_images=True)
    again.load()
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == ["g1"]
    again.close()


# ---------------------------------------------------------------- the service with its store
@pytest.fixture
def run(tmp_path, synthetic_tiny):
    write_checkpoint(tmp_path / "model.pt", 0, round=0)
    recs = synthetic_tiny.gallery[:6]
    raw = [open(r.path, "rb").read() for r in recs]
    t = InputTransform(H, W)
    return {"dir": tmp_path, "raw": raw, "images": [t(b, max_pixels=10_000) for b in raw],
            "entries": [GalleryEntry(f"g{i}", r.pid, r.camid) for i, r in enumerate(recs)]}


def cfg_of(run, **kw) -> ServeConfig:
    return ServeConfig(checkpoint=str(run["dir"]), height=H, width=W, amp="off", **kw)


def test_a_restarted_service_finds_every_entry_with_the_same_results(run):
    svc = ReidService(cfg_of(run))
    assert gallery_folder(svc.cfg) == run["dir"] / "gallery"
    svc.add(run["entries"][:4], run["images"][:4])
    svc.add(run["entries"][4:], run["images"][4:])
    svc.remove(["g1"])
    before = svc.search(run["images"], [5] * 6)
    svc.close()

    again = ReidService(cfg_of(run))
    assert [e.gallery_id for e in again.state.index.entries] == ["g0", "g2", "g3", "g4", "g5"]
    after = again.search(run["images"], [5] * 6)
    assert after == before and after[3] == 0  # same matches, distances, version; nothing stale
    again.close()
    memory = ReidService(cfg_of(run, persist_gallery=False))  # persistence off: an empty gallery, no folder used
    assert memory.state.index.size == 0 and memory.store is None


def test_without_kept_images_a_swap_makes_entries_stale_until_uploaded_again(run):
    svc = ReidService(cfg_of(run))
    svc.add(run["entries"], run["images"])
    old = svc.state.model.version
    write_checkpoint(run["dir"] / "model.pt", 1, round=1)
    assert svc.reload() is True
    new = svc.state.model.version
    matches, version, size, stale = svc.search(run["images"][:1], [3])
    assert matches == [[]] and version == new and size == 6 and stale == 6  # another model's vectors: not ranked
    assert svc.stale_ids() == [f"g{i}" for i in range(6)] and svc.version_info()["stale"] == 6
    svc.add(run["entries"][2:3], run["images"][2:3])  # uploaded again under its id: replaces the stale entry
    matches, _, size, stale = svc.search(run["images"][2:3], [3])
    assert [m["gallery_id"] for m in matches[0]] == ["g2"] and matches[0][0]["model_version"] == new
    assert size == 6 and stale == 5
    with pytest.raises(ServingError, match="already in use"):
        svc.add(run["entries"][2:3], run["images"][2:3])  # a fresh entry is not replaced
    svc.close()
    again = ReidService(cfg_of(run))  # the stale state survives a restart too
    assert again.stale_ids() == ["g0", "g1", "g3", "g4", "g5"] and old not in again.state.index.versions[-1:]
    again.close()


def test_with_kept_images_searches_go_on_during_the_background_reembedding(run):
    svc = ReidService(cfg_of(run, keep_images=True))
    svc.add(run["entries"], run["images"], run["raw"])
    old = svc.state
    write_checkpoint(run["dir"] / "model.pt", 1, round=1)
    answers, infos, stop = [], [], threading.Event()

    def searcher():
        while not stop.is_set():
            answers.append(svc.search(run["images"][3:4], [1]))
            infos.append(svc.version_info())

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        assert svc.reload() is True
    finally:
        stop.set()
        thread.join()
    new = svc.state
    assert new.model.version != old.model.version and svc.stale_ids() == []
    np.testing.assert_allclose(new.index.features, new.model.embed(run["images"]), rtol=1e-5, atol=1e-5)
    for matches, version, size, stale in answers:  # every answer: one model's query against that model's vectors
        assert matches[0][0]["gallery_id"] == "g3" and matches[0][0]["model_version"] == version and stale == 0
    # /version never shows the new model with the old swap count (the swap is published in one snapshot)
    seen = {(i["model_version"], i["swaps"], i["stale"]) for i in infos + [svc.version_info()]}
    assert seen <= {(old.model.version, 0, 0), (new.model.version, 1, 0)}, seen
    svc.remove(["g0"])  # changing the gallery keeps the count
    assert svc.version_info()["swaps"] == 1 and svc.state.model is new.model
    svc.close()
    again = ReidService(cfg_of(run, keep_images=True))  # the re-embedded vectors were stored
    np.testing.assert_array_equal(again.state.index.features, new.index.features[1:])
    again.close()


def test_a_checkpoint_changed_while_down_is_caught_up_from_kept_images(run):
    svc = ReidService(cfg_of(run, keep_images=True))
    svc.add(run["entries"], run["images"], run["raw"])
    svc.close()
    write_checkpoint(run["dir"] / "model.pt", 2, round=2)
    again = ReidService(cfg_of(run, keep_images=True))
    assert len(again.stale_ids()) == 6  # loaded, not yet re-embedded: the fresh entries are searched meanwhile
    assert again.catch_up() == 6 and again.stale_ids() == []
    assert again.version_info()["swaps"] == 0  # the serving model re-embedded its gallery: not a swap
    assert again.search(run["images"][5:6], [1])[0][0][0]["gallery_id"] == "g5"
    again.close()


# ---------------------------------------------------------------- access and limits
def test_access_roles_tokens_and_exposure(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("REIDLOOP_READ_TOKEN", raising=False)
    assert Access.from_config(ServeConfig(checkpoint="x")).open  # loopback, no token: a laptop
    assert Access.from_config(ServeConfig(checkpoint="x")).role(None) == ADMIN
    with pytest.raises(ConfigError, match="'0.0.0.0' exposes the service.*token_file"):
        Access.from_config(ServeConfig(checkpoint="x", host="0.0.0.0"))
    admin, read = "a" * 32, "r" * 32
    (tmp_path / "admin").write_text(admin + "\n")
    monkeypatch.setenv("REIDLOOP_READ_TOKEN", read)
    access = Access.from_config(ServeConfig(checkpoint="x", host="0.0.0.0", token_file=str(tmp_path / "admin")))
    assert admin not in str(access.to_dict()) and read not in str(access.to_dict())  # digests only
    access = Access.from_dict(access.to_dict())
    assert access.role(f"Bearer {admin}") == ADMIN and access.role(f"bearer {read}") == READ
    for header, why in ((None, "missing bearer token"), ("Basic abc", "missing bearer token"),
                        ("Bearer ", "missing bearer token"), ("Bearer " + "a" * 31, "invalid token")):
        with pytest.raises(ServingError, match=why) as info:
            access.role(header)
        assert info.value.status == 401
    with pytest.raises(ServingError, match="needs the admin token") as info:
        require_admin(READ, "POST /gallery")
    assert info.value.status == 403
    match = {"gallery_id": "g", "person_id": 3, "camera": 1, "distance": 0.5, "score": 0.7, "model_version": "v"}
    assert redact_matches([match], READ) == [{"gallery_id": "g", "distance": 0.5, "score": 0.7, "model_version": "v"}]
    assert redact_matches([match], ADMIN) == [match]
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        Access.from_config(ServeConfig(checkpoint="x"))
    with pytest.raises(ConfigError, match="cannot read"):
        Access.from_config(ServeConfig(checkpoint="x", token_file=str(tmp_path / "missing")))


def test_request_pixels_are_counted_from_headers_before_decoding():
    img = encode_image(np.zeros((100, 50, 3), np.uint8))  # 5,000 pixels
    check_request_pixels([("a", img), ("b", img)], 10_000, 5_000)
    with pytest.raises(ServingError, match="max_request_pixels=9999") as info:
        check_request_pixels([("a", img), ("b", img)], 9_999, 5_000)
    assert info.value.status == 413
    with pytest.raises(ServingError, match="b: 5000 pixels exceed the limit of 4999") as info:
        check_request_pixels([("b", img)], 10_000, 4_999)  # one image too large: said as such
    check_request_pixels([("bad", b"not an image"), ("a", img)], 5_000, 5_000)  # left to the decoder to report


def test_serve_config_checks_limits():
    with pytest.raises(ConfigError, match="max_in_flight"):
        ServeConfig(checkpoint="x", max_in_flight=300)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        ServeConfig(checkpoint="x", request_timeout_s=0)
    assert str(gallery_folder(ServeConfig(checkpoint="/r/m.pt"))) == os.path.join("/r", "gallery")
