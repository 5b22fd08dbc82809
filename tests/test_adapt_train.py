"""Unsupervised adaptation (reidloop/adapt/train.py) and its stage in the loop, on tiny synthetic data."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reidloop.active.loop import ActiveLearningLoop
from reidloop.adapt.train import adapt_unsupervised, camera_centred, cluster_report, unit
from reidloop.config import AdaptConfig, ConfigError, LoopJob, load_config
from reidloop.engine.precision import resolve_precision
from reidloop.models import load_checkpoint
from conftest import tiny_job

# k1/k2 sized for a 32-image pool (k1 = 20 would make every image a neighbour of every other)
ADAPT = {"adapt.epochs": 2, "adapt.eps": 0.5, "adapt.min_samples": 2, "adapt.k1": 4, "adapt.k2": 2,
         "adapt.ids_per_batch": 2, "adapt.images_per_id": 2}


def test_cluster_report_on_a_hand_made_case():
    labels = np.array([0, 0, 1, 1, -1, 2])
    cameras = np.array([0, 1, 0, 0, 1, 1])
    truth = np.array([7, 7, 8, 9, 9, 5])
    rep = cluster_report(labels, cameras, truth)
    assert rep["clusters"] == 3 and rep["clustered"] == pytest.approx(5 / 6)
    assert rep["cross_camera"] == pytest.approx(1 / 3)  # only cluster 0 spans both cameras
    assert rep["purity"] == pytest.approx(4 / 5)  # cluster 1 holds persons 8 and 9: one of its two is off
    # same-cluster pairs (ordered, off-diagonal): (0,1),(1,0),(2,3),(3,2) -> 2 of 4 are one person
    assert rep["pair_precision"] == pytest.approx(0.5)
    # same-person pairs: persons 7 (0,1) and 9 (3,4) -> 4 ordered pairs, 2 found
    assert rep["pair_recall"] == pytest.approx(0.5)


def test_camera_centring_removes_what_a_camera_adds_to_every_image():
    """Each person's look plus a strong per-camera offset: by plain distance every image's nearest neighbour is
    from its own camera (a different person); centred per camera, it is the same person in the other camera."""
    rng = np.random.default_rng(0)
    persons = rng.normal(size=(10, 16))
    offsets = 4.0 * rng.normal(size=(2, 16))
    feats = np.concatenate([persons + offsets[c] for c in (0, 1)]).astype(np.float32)
    cameras = np.repeat([0, 1], 10)
    truth = np.tile(np.arange(10), 2)

    def nearest_is_same_person(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = ((x[:, None] - x[None]) ** 2).sum(-1) + np.eye(len(x)) * 1e9
        return (truth[d.argmin(1)] == truth).mean()

    assert nearest_is_same_person(feats) == 0.0
    centred = camera_centred(feats, cameras)
    assert nearest_is_same_person(centred) == 1.0
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1.0, rtol=1e-5)


def test_adaptation_trains_on_the_clusters_and_answers_as_constraints_make_them_the_persons(
        tmp_path, tiny_checkpoint, synthetic_tiny):
    records = list(synthetic_tiny.train)
    truth = np.array([r.pid for r in records])
    pairs = [(i, j) for i in range(len(records)) for j in range(i + 1, len(records))]
    same = np.array([p for p in pairs if truth[p[0]] == truth[p[1]]])
    different = np.array([p for p in pairs if truth[p[0]] != truth[p[1]]])
    model, _ = load_checkpoint(tiny_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdaptConfig(epochs=2, eps=0.6, min_samples=2, k1=4, k2=2, ids_per_batch=2, images_per_id=2)
    h, w = records_size(synthetic_tiny)
    history = adapt_unsupervised(model, records, height=h, width=w, cfg=cfg,
                                 precision=resolve_precision("off", torch.device("cpu")), must_link=same,
                                 cannot_link=different, truth=truth, progress=False)
    assert [e.epoch for e in history] == [0, 1]
    # every pair answered (an untrained model alone would put everyone in one cluster): the pseudo-identities
    # are the persons, all of them clustered
    for e in history:
        assert (e.clusters, e.clustered, e.purity, e.pair_precision, e.pair_recall) == (
            len(np.unique(truth)), 1.0, 1.0, 1.0, 1.0)
        assert e.steps > 0 and np.isfinite(e.loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    assert not model.training


def test_eps_rho_sets_each_epochs_radius_from_its_distances(tiny_checkpoint, synthetic_tiny):
    from reidloop.adapt.clustering import auto_eps, jaccard_distance
    from reidloop.engine.features import extract_features

    records = list(synthetic_tiny.train)
    model, _ = load_checkpoint(tiny_checkpoint)
    h, w = records_size(synthetic_tiny)
    precision = resolve_precision("off", torch.device("cpu"))
    feats = unit(extract_features(model, records, height=h, width=w, precision=precision, progress=False))
    cameras = np.array([r.camid for r in records])
    expected = auto_eps(jaccard_distance(camera_centred(feats, cameras), 4, 2), 0.05)
    cfg = AdaptConfig(epochs=1, eps=0.9, eps_rho=0.05, min_samples=2, k1=4, k2=2, ids_per_batch=2, images_per_id=2)
    history = adapt_unsupervised(model, records, height=h, width=w, cfg=cfg, precision=precision, progress=False)
    assert history[0].eps == pytest.approx(expected) and history[0].eps != 0.9
    assert f"eps {expected:.3f}" in history[0].line()


def records_size(splits) -> tuple[int, int]:
    from PIL import Image

    with Image.open(splits.train[0].path) as img:
        return img.height, img.width


def test_adapt_config_is_validated():
    for override, fragment in (("adapt.eps=1.5", "eps"), ("adapt.epochs=-1", "epochs"),
                               ("adapt.ids_per_batch=1", "ids_per_batch"), ("adapt.momentum=2", "momentum"),
                               ("adapt.round_epochs=-1", "round_epochs"), ("adapt.eps_rho=0", "eps_rho")):
        with pytest.raises(ConfigError, match=fragment):
            load_config(LoopJob, None, [override])


@pytest.mark.slow
def test_the_loop_adapts_once_before_round_0_and_a_rerun_reuses_it(tmp_path, tiny_checkpoint):
    plain = ActiveLearningLoop(tiny_job(tmp_path / "plain", tiny_checkpoint, tmp_path / "cache",
                                        strategy="random"), progress=False)
    plain.run()
    job = tiny_job(tmp_path / "adapted", tiny_checkpoint, tmp_path / "cache", strategy="random", **ADAPT)
    ActiveLearningLoop(job, progress=False).run()
    out = tmp_path / "adapted"
    report = json.loads((out / "adapt.json").read_text())
    assert report["config"]["epochs"] == 2 and len(report["epochs"]) == 2
    assert all(0 <= e["clustered"] <= 1 and e["purity"] is not None for e in report["epochs"])
    adapted, _ = load_checkpoint(out / "adapted.pt")
    source, _ = load_checkpoint(tiny_checkpoint)
    assert any(not torch.equal(v, adapted.state_dict()[k]) for k, v in source.state_dict().items()
               if k in adapted.state_dict())
    row0 = pq.read_table(out / "rounds.parquet").to_pylist()[0]
    plain0 = pq.read_table(tmp_path / "plain" / "rounds.parquet").to_pylist()[0]
    assert row0["answers"] == 0 and row0["mAP"] != plain0["mAP"]  # round 0 measures the adapted model
    stamp = (out / "adapted.pt").stat().st_mtime_ns, (out / "adapt.json").read_text()
    ActiveLearningLoop(job, progress=False).run()  # the same run again: adaptation is not repeated
    assert ((out / "adapted.pt").stat().st_mtime_ns, (out / "adapt.json").read_text()) == stamp


@pytest.mark.slow
def test_rounds_re_adapt_under_the_answers_so_far_as_constraints(tmp_path, tiny_checkpoint):
    from conftest import answered
    from reidloop.pair_knowledge import PairKnowledge

    out = tmp_path / "readapt"
    job = tiny_job(out, tiny_checkpoint, tmp_path / "cache", strategy="nearest", **ADAPT,
                   **{"adapt.round_epochs": 1})
    ActiveLearningLoop(job, progress=False).run()
    done = json.loads((out / "readapt.json").read_text())
    rounds = pq.read_table(out / "rounds.parquet").to_pylist()
    assert sorted(done, key=int) == [str(r["round"]) for r in rounds if r["round"] > 0]
    q, c, y = answered(out)
    for r, rec in done.items():
        n = rounds[int(r)]["answers"]  # the answers in force when round r re-adapted
        must, cannot = PairKnowledge(max(q + c) + 1, zip(q[:n], c[:n], y[:n])).constraints()
        assert (rec["must_link"], rec["cannot_link"], rec["conflicts"]) == (len(must), len(cannot), 0)
        assert len(rec["epochs"]) == 1
    assert rec["must_link"] + rec["cannot_link"] > 0
