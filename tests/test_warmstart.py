"""The agent warm-start on labelled identities (dral.warmstart_passes), core and loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reidloop.active.loop import ActiveLearningLoop
from reidloop.active.warmstart import warm_start
from reidloop.config import ConfigError, DralConfig
from reidloop.strategies import build_strategy
from reidloop.strategies.random import RandomStrategy

from conftest import Crash, answered, crashing_loop, tiny_job

CFG = DralConfig(ns=6, kmax=3, kappa=3, batch_size=8, replay_size=512, epsilon_decay_steps=50)


def labelled_set(ids: int = 6, per_id: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy clusters, one per identity: a realistic mix of near matches and near non-matches."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, 8))
    pids = np.repeat(np.arange(ids) + 100, per_id)
    return (centres[pids - 100] + 0.8 * rng.normal(size=(len(pids), 8))).astype(np.float32), pids


class Recorder(RandomStrategy):
    def __init__(self, seed=0):
        super().__init__(seed)
        self.seen = []

    def observe(self, t):
        self.seen.append(t)


def test_each_pass_browses_every_labelled_image_with_true_answers():
    features, pids = labelled_set()
    rec = Recorder()
    stats = warm_start(rec, features, pids, CFG, passes=2, every=0.5, seed=0)
    assert stats.episodes == 2 * len(pids) and stats.questions == len(rec.seen) > 0
    assert all(t.answer == (1 if pids[t.query] == pids[t.candidate] else -1) for t in rec.seen)
    assert stats.same == sum(t.answer > 0 for t in rec.seen) > 0
    assert stats.mean_reward == pytest.approx(np.mean([t.reward for t in rec.seen]))
    per_query = np.bincount([t.query for t in rec.seen], minlength=len(pids))
    assert per_query.max() <= 2 * CFG.kmax
    one = Recorder()
    warm_start(one, features, pids, CFG, passes=1, every=0.5, seed=0)
    keys = [(min(t.query, t.candidate), max(t.query, t.candidate)) for t in one.seen]
    assert len(keys) == len(set(keys))  # within a pass settled pairs are revealed, never asked
    assert np.bincount([t.query for t in one.seen]).max() <= CFG.kmax


def test_dral_learns_from_the_warm_up_and_it_is_reproducible():
    features, pids = labelled_set()
    a, b = build_strategy("dral", CFG, seed=3), build_strategy("dral", CFG, seed=3)
    untouched = build_strategy("dral", CFG, seed=3)
    sa = warm_start(a, features, pids, CFG, passes=2, every=0.5, seed=1)
    sb = warm_start(b, features, pids, CFG, passes=2, every=0.5, seed=1)
    assert sa.questions == sb.questions and a.agent.act_steps == sa.questions
    assert a.agent.learn_steps > 0 and a.agent.epsilon == pytest.approx(CFG.epsilon_end)  # ε spent here
    obs = a.agent.replay.obs[:4]
    np.testing.assert_array_equal(a.agent.q_values(obs), b.agent.q_values(obs))
    assert not np.allclose(a.agent.q_values(obs), untouched.agent.q_values(obs))


def test_zero_passes_change_nothing_and_bad_input_is_named():
    features, pids = labelled_set()
    s = build_strategy("dral", CFG, seed=0)
    assert warm_start(s, features, pids, CFG, passes=0, every=0.5).questions == 0 and s.agent.act_steps == 0
    with pytest.raises(ValueError, match="warmstart_passes"):
        warm_start(s, features, pids, CFG, passes=-1, every=0.5)
    with pytest.raises(ValueError, match="dral.ns=6"):
        warm_start(s, features[:6], pids[:6], CFG, passes=1, every=0.5)
    with pytest.raises(ValueError, match="24 feature rows but 23"):
        warm_start(s, features, pids[:-1], CFG, passes=1, every=0.5)


def test_config_refuses_a_warm_start_without_labelled_identities(tmp_path):
    with pytest.raises(ConfigError, match="dral.warmstart_passes"):
        tiny_job(tmp_path, "some.pt", tmp_path / "cache", **{"dral.warmstart_passes": 1})
    with pytest.raises(ConfigError, match="warmstart_passes: -1"):
        DralConfig(warmstart_passes=-1)
    with pytest.raises(ConfigError, match="warmstart_root.*go together"):
        tiny_job(tmp_path, "some.pt", tmp_path / "cache", warmstart_dataset="cuhk03")


@pytest.mark.slow  # a whole loop run: 4-12 s
def test_a_run_from_a_checkpoint_warms_up_on_another_labelled_set(tmp_path, tiny_checkpoint):
    """With `checkpoint`, the agent warms up on the train split of `warmstart_dataset` (capped identities)."""
    source = tmp_path / "source"  # another synthetic set stands in for CUHK03 (same reader path)
    job = tiny_job(tmp_path / "run", tiny_checkpoint, tmp_path / "cache", warmstart_dataset="synthetic",
                   warmstart_root=str(source), warmstart_max_ids=5, **{"dral.warmstart_passes": 1})
    loop = ActiveLearningLoop(job, progress=False)
    result = loop.run()
    stats = json.loads((tmp_path / "run" / "warmstart.json").read_text())
    assert stats["questions"] > 0 and len({r.pid for r in loop.labelled}) == 5
    assert all(str(source) in r.path for r in loop.labelled)  # not the pool's own images
    assert len(answered(tmp_path / "run")[0]) == result.answers  # the warm-up spent no answer


PRETRAIN = {"pretrain.epochs": 1, "pretrain.ids_per_batch": 2, "pretrain.images_per_id": 2,
            "dral.warmstart_passes": 1}


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    job = tiny_job(root / "full", "", root / "cache", **PRETRAIN)
    result = ActiveLearningLoop(job, progress=False).run()
    return root, result


@pytest.mark.slow  # its warm_run (a whole loop with pre-training): 3-6 s
def test_loop_warm_starts_the_agent_without_spending_answers(warm_run):
    root, result = warm_run
    out = root / "full"
    stats = json.loads((out / "warmstart.json").read_text())
    assert stats["passes"] == 1 and stats["questions"] > 0
    agent = torch.load(out / "strategy.pt", weights_only=True)["agent"]
    assert agent["act_steps"] == stats["questions"] + result.answers  # the warm-up is not in the log
    q, c, _ = answered(out)
    assert len(q) == result.answers <= 12 * 3
    assert json.loads((out / "summary.json").read_text())["answers"] == result.answers


@pytest.mark.slow  # a crashed and a resumed loop run: 5-6 s
def test_resume_reloads_the_warm_agent_and_asks_the_same(tmp_path, warm_run, caplog):
    root, full = warm_run
    job = tiny_job(tmp_path / "crash", "", root / "cache", **PRETRAIN)
    with pytest.raises(Crash):
        crashing_loop(job, after=5).run()  # inside round 1, after the warm-up
    assert (tmp_path / "crash" / "strategy_warm.pt").exists()
    with caplog.at_level("INFO", logger="reidloop.active.loop"):
        resumed = ActiveLearningLoop(job, progress=False).run()
    assert "warm-started agent reloaded" in caplog.text  # not warmed up a second time
    assert resumed.replayed_answers == 5
    assert answered(tmp_path / "crash") == answered(root / "full")  # same questions, same order
    assert resumed.answers == full.answers
