"""dral.stop (not in the paper, opt-in): the agent may end a query's episode when no open candidate is
worth the paced price of an answer."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from reidloop.active.engine import Answers, EpisodeStats, LocalAgent, LocalSlots, run_round
from reidloop.active.loop import ActiveLearningLoop
from reidloop.config import ConfigError, DralConfig, LoopJob, load_config
from reidloop.dral.agent import q_target
from reidloop.dral.metric import EuclideanMetric
from reidloop.strategies.base import Transition
from reidloop.strategies.dral import DralStrategy

from conftest import BY_ANSWERS, Crash, answered, crashing_loop, tiny_job

STOP = {"strategy": "dral", "dral.reward": "links", "dral.stop": "true"}


def test_stop_needs_the_links_reward_and_a_positive_pace_rate():
    with pytest.raises(ConfigError, match=r"dral\.stop.*reward: links"):
        load_config(LoopJob, None, ["dral.stop=true"])
    with pytest.raises(ConfigError, match=r"dral\.stop_pace_rate"):
        load_config(LoopJob, None, ["dral.reward=links", "dral.stop=true", "dral.stop_pace_rate=0"])
    assert load_config(LoopJob, None, [f"{k}={v}" for k, v in STOP.items()]).dral.stop is True


def test_priced_target_subtracts_the_price_and_never_values_going_on_below_stopping():
    reward = torch.tensor([1.0, 0.0, 1.0, 2.0])
    next_q = torch.tensor([0.5, -0.7, -0.2, 3.0])
    live = torch.tensor([True, True, True, False])
    plain = q_target(reward, next_q, live, gamma=0.5)
    assert plain.tolist() == pytest.approx([1.25, -0.35, 0.9, 2.0])  # Eq. 10 as before
    priced = q_target(reward, next_q, live, gamma=0.5, price=0.3)
    # 1 - 0.3 + 0.5 * 0.5; 0 - 0.3 + 0 (stopping beats -0.7); 1 - 0.3 + 0; terminal: 2 - 0.3
    assert priced.tolist() == pytest.approx([0.95, -0.3, 0.7, 1.7])


def tiny_strategy(**over) -> DralStrategy:
    cfg = DralConfig(ns=4, kmax=3, kappa=2, batch_size=2, replay_size=8, reward="links", stop=True, **over)
    return DralStrategy(cfg, seed=0)


def fake_transition(strategy: DralStrategy) -> Transition:
    dim = strategy.agent.obs_dim
    return Transition(np.zeros(dim, np.float32), 0, 0.0, np.zeros(dim, np.float32), np.ones(4, bool), False,
                      -1, 0, 1)


def test_the_price_rises_while_episodes_overspend_their_pace_and_falls_back_to_zero():
    s = tiny_strategy(stop_pace_rate=0.1)
    s.begin_episode(answers_left=10, queries_left=10)  # pace: 1 answer per query
    for _ in range(4):
        s.observe(fake_transition(s))
    s.begin_episode(answers_left=6, queries_left=9)  # 4 asked against a pace of 1: +0.1 * 3
    assert s.agent.price == pytest.approx(0.3) and s.pace == pytest.approx(6 / 9)
    s.begin_episode(answers_left=6, queries_left=8)  # nothing asked against 2/3: -0.1 * 2/3
    assert s.agent.price == pytest.approx(0.3 - 0.1 * 6 / 9)
    for _ in range(5):
        s.begin_episode(answers_left=6, queries_left=1)  # 6 a query allowed, none taken: floored at 0
    assert s.agent.price == 0.0
    restored = tiny_strategy(stop_pace_rate=0.1)
    s.agent.price = 0.25
    restored.load_state_dict(s.state_dict())
    assert (restored.agent.price, restored.pace, restored.episode_questions) == (0.25, 6.0, 0)


def test_an_agent_that_values_no_candidate_above_its_price_ends_the_episode_unasked():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 3)).astype(np.float32)
    asked = []

    class Different:  # answers "different" to everything, unlimited
        remaining = None

        def known_batch(self, requests):
            return [[None] * len(c) for _, c in requests]

        def ask_batch(self, questions, strategy):
            asked.extend(c for _, c, _, _ in questions)
            return [-1] * len(questions)

    for stop in (False, True):
        s = tiny_strategy() if stop else DralStrategy(DralConfig(ns=4, kmax=3, kappa=2, reward="links"), seed=0)
        last = s.agent.online[-1]
        with torch.no_grad():  # Q(s, a) = -1 for every candidate
            last.weight.zero_()
            last.bias.fill_(-1.0)
        stats, asked = EpisodeStats(), []
        run_round(LocalSlots(s.cfg, features, EuclideanMetric()), LocalAgent(s), Answers(Different()),
                  np.array([0]), np.arange(1, 5)[None], 1, s.cfg.kmax, reward_kind=s.cfg.reward, stats=stats)
        n = len(asked)
        if stop:
            assert n == 0 and asked == [] and (stats.stopped, stats.episodes) == (1, 0)
        else:  # the paper's agent always asks Kmax
            assert n == 3 and len(asked) == 3 and stats.stopped == 0


@pytest.mark.slow
@pytest.mark.parametrize("crash_after", [4])  # inside round 1
def test_a_stopping_run_spends_its_budget_and_resumes_to_the_same_questions(tmp_path, tiny_checkpoint, crash_after):
    over = {**BY_ANSWERS, **STOP, "dral.stop_pace_rate": 2.0, "infer_answers": "true"}  # a price that bites
    cache = tmp_path / "cache"
    full = ActiveLearningLoop(tiny_job(tmp_path / "full", tiny_checkpoint, cache, **over), progress=False).run()
    rows = pq.read_table(tmp_path / "full" / "rounds.parquet").to_pylist()
    assert sum(r["episodes_stopped"] for r in rows[1:]) >= 1  # it did stop, and says so
    assert [r["answers"] for r in full.rounds] == [0, 5, 10]  # the budget is spent, round by round
    saved = torch.load(tmp_path / "full" / "strategy.pt", weights_only=False)
    assert saved["agent"]["price"] >= 0.0 and saved["pace"] is not None
    job = tiny_job(tmp_path / "crash", tiny_checkpoint, cache, **over)
    with pytest.raises(Crash):
        crashing_loop(job, after=crash_after).run()
    ActiveLearningLoop(job, progress=False).run()
    assert answered(tmp_path / "full") == answered(tmp_path / "crash")  # same pairs, same order
    assert json.loads((tmp_path / "crash" / "state.json").read_text())["next_query"] == \
        json.loads((tmp_path / "full" / "state.json").read_text())["next_query"]
