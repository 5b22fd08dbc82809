"""The learned-loss ranking strategy (L2R-AL's idea) in the Re-ID loop: learning, asking, state, the loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import DralConfig, LoopJob, load_config
from reidloop.config.l2r import L2RReidConfig
from reidloop.dral.metric import EuclideanMetric
from reidloop.l2r.sorter import spearman
from reidloop.strategies import RoundContext, Transition, build_strategy
from reidloop.strategies.l2r import L2RStrategy, pair_distances

from conftest import pair_array, query_episode

NS = 4
CFG = L2RReidConfig(steps=60, min_answers=8)


def hard_and_easy_pool(seed=0):
    """24 items, 8 identities × 3. Identities 0-3 'easy': far-apart tight clusters (positives near, negatives far).
    Identities 4-7 'hard': all in one blob (negatives as near as positives), flagged by feature dim 2."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(8), 3)
    centres = np.concatenate([rng.normal(0, 5, (4, 2)), np.zeros((4, 2))])
    f = np.concatenate([centres[ids] + rng.normal(0, 0.3, (24, 2)), (ids >= 4)[:, None] * 1.0,
                        np.ones((24, 1))], 1)
    return f, ids


def answered(ids, pairs):
    pos = [(a, b) for a, b in pairs if ids[a] == ids[b]]
    neg = [(a, b) for a, b in pairs if ids[a] != ids[b]]
    return pair_array(pos), pair_array(neg)


def episode(features, query, candidates):
    env, obs, info = query_episode(features, query, candidates, ns=NS)
    return env, obs, info["action_mask"]


def trained_strategy(seed=0):
    f, ids = hard_and_easy_pool()
    pairs = [(a, b) for a in range(24) for b in range(a + 1, 24)]
    pos, neg = answered(ids, pairs)
    s = L2RStrategy(DralConfig(), seed=seed, cfg=CFG)
    s.begin_round(RoundContext(1, f, EuclideanMetric(), pos, neg))
    return s, f, ids, pos, neg


def test_asks_at_random_until_enough_answers():
    f, ids = hard_and_easy_pool()
    s = build_strategy("l2r", DralConfig(), seed=0)
    assert isinstance(s, L2RStrategy)
    s.begin_round(RoundContext(1, f, EuclideanMetric(), *answered(ids, [(0, 1), (0, 5)])))
    env, obs, mask = episode(f, 0, [1, 2, 3, 4])
    mask[1] = False
    picks = {s.select(env, obs, mask) for _ in range(60)}
    assert not s.trained and picks == {0, 2, 3}


def test_head_learns_the_order_of_the_observed_pair_losses():
    s, f, ids, pos, neg = trained_strategy()
    assert s.trained and s.last_fit_loss is not None
    q = np.concatenate([pos[:, 0], neg[:, 0]]); c = np.concatenate([pos[:, 1], neg[:, 1]])
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    ds = pair_distances(EuclideanMetric(), f, q, c) / s.scale
    with torch.no_grad():
        pred = s.head(s.pair_features(q, c, ds))
    assert spearman(pred, s.pair_losses(ds, y)).item() > 0.6


def test_asks_the_highest_predicted_loss_and_prefers_the_hard_pair():
    s, f, ids, _, _ = trained_strategy()
    # query 12 (hard identity 4); candidates: 15 of another hard identity (a near negative) and three easy items
    env, obs, mask = episode(f, 12, [15, 0, 3, 6])
    pred = s.predicted_losses(env)
    assert s.select(env, obs, mask) == int(np.argmax(pred)) == 0
    mask[0] = False
    assert s.select(env, obs, mask) == 1 + int(np.argmax(pred[1:]))


def test_learns_online_and_its_state_round_trips(tmp_path):
    s, f, ids, _, _ = trained_strategy()
    before = [p.clone() for p in s.head.parameters()]
    env, obs, mask = episode(f, 12, [13, 0, 3, 6])
    for k in range(CFG.update_every):  # a retraining is due after update_every answers
        s.observe(Transition(obs, 0, 0.0, obs, mask, False, 1, 12, 13))
    assert s.since_fit == 0 and any(not torch.equal(a, b) for a, b in zip(before, s.head.parameters()))
    torch.save(s.state_dict(), tmp_path / "strategy.pt")
    fresh = L2RStrategy(DralConfig(), seed=5, cfg=CFG)
    fresh.load_state_dict(torch.load(tmp_path / "strategy.pt", weights_only=True))
    fresh.begin_round(RoundContext(2, f, EuclideanMetric(), np.empty((0, 2), np.int64), np.empty((0, 2), np.int64)))
    assert np.allclose(fresh.predicted_losses(env), s.predicted_losses(env))  # too few answers: no refit


@pytest.mark.slow  # a whole loop run: 3-4 s
def test_l2r_runs_in_the_loop_on_synthetic_data(tmp_path, tiny_checkpoint):
    sets = ["data.height=32", "data.width=16", f"data.root={tmp_path / 'cache'}",
            "data.synthetic.train_ids=8", "data.synthetic.test_ids=4", "data.synthetic.images_per_camera=2",
            "data.synthetic.height=32", "data.synthetic.width=16", "model.backbone=resnet18",
            f"checkpoint={tiny_checkpoint}", "dral.ns=6", "dral.kmax=3", "dral.kappa=3", "finetune.lr=1e-4",
            "finetune.every=0.5", "finetune.epochs=1", "finetune.queries_per_batch=4", "eval.batch_size=64",
            f"output_dir={tmp_path / 'out'}", "max_queries=10", "strategy=l2r"]
    job = load_config(LoopJob, None, sets)
    result = ActiveLearningLoop(job, progress=False).run()
    assert 0 < result.answers <= 10 * 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["strategy"] == "l2r" and summary["answers"] == result.answers
    state = torch.load(tmp_path / "out" / "strategy.pt", weights_only=True)
    assert state["trained"] and state["head_in"] > 0  # by round 2 it asks by predicted loss
