"""The fine-tune's lr schedule: a frozen body while a fresh CE head learns, then a linear warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reidloop.active.finetune import finetune, lr_factor
from reidloop.config import ConfigError, FinetuneConfig, LoopJob, ModelConfig, load_config
from reidloop.config.schema import SyntheticConfig
from reidloop.data.synthetic import synthetic_splits
from reidloop.engine.precision import resolve_precision
from reidloop.models import build_model


def test_lr_factor_freezes_the_body_then_warms_up():
    cfg = FinetuneConfig(freeze_steps=2, warmup_steps=4)
    body = [lr_factor(s, cfg, body=True) for s in range(8)]
    head = [lr_factor(s, cfg, body=False) for s in range(6)]
    assert body == pytest.approx([0, 0, 0.1, 0.325, 0.55, 0.775, 1, 1])
    assert head == pytest.approx([0.1, 0.325, 0.55, 0.775, 1, 1])
    # without a CE head there is nothing to train alone: the body warms up from step 0
    assert [lr_factor(s, cfg, body=True, has_head=False) for s in range(2)] == pytest.approx([0.1, 0.325])
    assert lr_factor(0, FinetuneConfig(), body=True) == 1.0  # the defaults change nothing


@pytest.mark.parametrize("field", ["freeze_steps", "warmup_steps"])
def test_negative_schedule_is_rejected_naming_the_field(field):
    with pytest.raises(ConfigError, match=f"finetune.{field}: -1"):
        load_config(LoopJob, None, [f"finetune.{field}=-1"])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    cfg = SyntheticConfig(train_ids=4, test_ids=2, images_per_camera=2, cameras=2, height=32, width=16)
    return synthetic_splits(cfg, str(tmp_path_factory.mktemp("syn"))).train


def _body(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier.")}


@pytest.mark.parametrize("freeze_steps, moves", [(100, False), (0, True)])
def test_a_frozen_body_is_not_updated(pool, freeze_steps, moves):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), num_classes=0)
    before = _body(model)
    pids = np.array([r.pid for r in pool])
    q = np.repeat(np.arange(len(pool)), 3)
    c = (q + np.tile([1, 4, 8], len(pool))) % len(pool)
    y = np.where(pids[q] == pids[c], 1, -1)
    cfg = FinetuneConfig(lr=1e-3, epochs=2, queries_per_batch=8, freeze_steps=freeze_steps, amp="off")
    stats = finetune(model, pool, cfg, height=32, width=16, precision=resolve_precision("off", torch.device("cpu")),
                     mode="pairs", seed=0, queries=q, candidates=c, answers=y)
    assert stats.batches >= 2 and stats.ce > 0  # a CE head existed and trained
    after = _body(model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert bool(changed) == moves
