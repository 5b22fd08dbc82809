"""Adapted models kept by what made them (``adapt.cache_dir``, reidloop/adapt/cache.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from reidloop.active.loop import ActiveLearningLoop
from reidloop.adapt.cache import adapt_key, cached, weights_digest
from reidloop.config import AdaptConfig
from reidloop.models import load_checkpoint
from conftest import tiny_job
from test_adapt_train import ADAPT


def test_the_key_changes_with_everything_adaptation_reads_and_nothing_else():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    cfg, pool = AdaptConfig(epochs=2), ["a.jpg", "b.jpg", "c.jpg"]
    key = adapt_key(model, pool, cfg, 32, 16, "cpu/fp32")
    assert len(key) == 24 and key == adapt_key(model, list(pool), AdaptConfig(epochs=2), 32, 16, "cpu/fp32")
    assert key == adapt_key(model, pool, replace(cfg, cache_dir="/elsewhere"), 32, 16, "cpu/fp32")
    assert key == adapt_key(model, pool, replace(cfg, round_epochs=2), 32, 16, "cpu/fp32")  # not before round 0
    others = [adapt_key(model, pool[::-1], cfg, 32, 16, "cpu/fp32"),  # the pool's order is the sampler's
              adapt_key(model, pool[:2], cfg, 32, 16, "cpu/fp32"),
              adapt_key(model, pool, replace(cfg, lr=2e-4), 32, 16, "cpu/fp32"),
              adapt_key(model, pool, replace(cfg, seed=1), 32, 16, "cpu/fp32"),
              adapt_key(model, pool, replace(cfg, eps_rho=1.6e-3), 32, 16, "cpu/fp32"),
              adapt_key(model, pool, cfg, 64, 32, "cpu/fp32"),
              adapt_key(model, pool, cfg, 32, 16, "cpu/bf16")]
    before = weights_digest(model)
    with torch.no_grad():
        model[1].running_mean[0] += 1e-6  # a buffer is part of the model too
    assert weights_digest(model) != before
    others.append(adapt_key(model, pool, cfg, 32, 16, "cpu/fp32"))
    assert len({key, *others}) == len(others) + 1


class CountingLoop(ActiveLearningLoop):
    """The loop as it is, counting the adaptations it runs."""

    adaptations = 0

    def adapt(self, model, pool, *args, **kwargs):
        CountingLoop.adaptations += 1
        return super().adapt(model, pool, *args, **kwargs)


@pytest.mark.slow
def test_runs_from_the_same_model_and_pool_adapt_once_and_other_settings_adapt_again(tmp_path, tiny_checkpoint):
    cache, data = tmp_path / "adapted", tmp_path / "data"
    CountingLoop.adaptations = 0
    first = tiny_job(tmp_path / "random", tiny_checkpoint, data, strategy="random", **ADAPT,
                     **{"adapt.cache_dir": str(cache)})
    CountingLoop(first, progress=False).run()
    assert CountingLoop.adaptations == 1
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".pt")
    made = json.loads((cache / entries[0]).read_text())
    assert made["made_in"] == str(tmp_path / "random") and len(made["epochs"]) == 2

    # another strategy, another output folder: the same adapted model, not adapted again
    second = tiny_job(tmp_path / "nearest", tiny_checkpoint, data, strategy="nearest", **ADAPT,
                      **{"adapt.cache_dir": str(cache)})
    CountingLoop(second, progress=False).run()
    assert CountingLoop.adaptations == 1
    report = json.loads((tmp_path / "nearest" / "adapt.json").read_text())
    assert report["reused"] == str(cache / entries[1]) and report["epochs"] == made["epochs"]
    a, _ = load_checkpoint(tmp_path / "random" / "adapted.pt")
    b, _ = load_checkpoint(tmp_path / "nearest" / "adapted.pt")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    # other adapt settings: adapted again, and kept beside the first
    third = tiny_job(tmp_path / "other", tiny_checkpoint, data, strategy="random",
                     **{**ADAPT, "adapt.lr": 3e-4, "adapt.cache_dir": str(cache)})
    CountingLoop(third, progress=False).run()
    assert CountingLoop.adaptations == 2 and len(list(cache.glob("*.pt"))) == 2
    assert "reused" not in json.loads((tmp_path / "other" / "adapt.json").read_text())

    # a damaged entry (its model file cut short) is a miss: adapted again, and the entry replaced by a good one
    (cache / entries[1]).write_bytes((cache / entries[1]).read_bytes()[:100])
    fourth = tiny_job(tmp_path / "damaged", tiny_checkpoint, data, strategy="random", **ADAPT,
                      **{"adapt.cache_dir": str(cache)})
    CountingLoop(fourth, progress=False).run()
    assert CountingLoop.adaptations == 3
    c, _ = load_checkpoint(cache / entries[1])
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_an_entry_whose_record_is_unreadable_is_a_miss_that_names_it(tmp_path, caplog):
    (tmp_path / "k.pt").write_bytes(b"model")
    assert cached(tmp_path, "k") is None  # no record yet: the entry is not complete
    (tmp_path / "k.json").write_text('{"epochs": [')  # cut short
    with caplog.at_level("WARNING", logger="reidloop.adapt.cache"):
        assert cached(tmp_path, "k") is None
    assert str(tmp_path / "k.json") in caplog.text and "adapting again" in caplog.text
    (tmp_path / "k.json").write_text("[1, 2]")
    assert cached(tmp_path, "k") is None
    (tmp_path / "k.json").write_text('{"epochs": [], "made_in": "/runs/a"}')
    assert cached(tmp_path, "k") == (tmp_path / "k.pt", {"epochs": [], "made_in": "/runs/a"})
