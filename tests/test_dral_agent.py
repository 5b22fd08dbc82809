"""DQNAgent: masked ε-greedy acting, the ε schedule, Q-learning (Eq. 10), target sync, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reidloop.config.schema import DralConfig
from reidloop.dral.agent import DQNAgent

OBS, ACTIONS = 6, 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on a shared 2-core machine: intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(**kw) -> DralConfig:
    base = dict(hidden=32, layers=2, batch_size=16, replay_size=256, target_sync=20,
                epsilon_start=0.5, epsilon_end=0.05, epsilon_decay_steps=100)
    base.update(kw)
    return DralConfig(**base)


def bandit(agent: DQNAgent, n: int, rng: np.random.Generator) -> None:
    """Episodes of one step: action 2 pays 1, every other action pays 0."""
    mask = np.ones(ACTIONS, bool)
    for _ in range(n):
        obs = rng.normal(size=OBS).astype(np.float32)
        a = agent.act(obs, mask)
        agent.remember(obs, a, float(a == 2), obs, np.zeros(ACTIONS, bool), True)


@pytest.mark.parametrize("explore,eps", [(True, 1.0), (True, 0.5), (False, 0.0)])
def test_masked_actions_never_chosen(explore, eps):
    agent = DQNAgent(OBS, ACTIONS, cfg(epsilon_start=eps, epsilon_end=eps), seed=0)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        mask = rng.random(ACTIONS) < 0.4
        mask[rng.integers(ACTIONS)] = True
        a = agent.act(rng.normal(size=OBS), mask, explore=explore)
        assert mask[a]
        seen.add(a)
    assert len(seen) == ACTIONS  # every action is reachable when valid


def test_random_exploration_covers_valid_actions_uniformly():
    agent = DQNAgent(OBS, ACTIONS, cfg(epsilon_start=1.0, epsilon_end=1.0), seed=0)
    mask = np.array([True, False, True, True, False])
    counts = np.bincount([agent.act(np.zeros(OBS), mask) for _ in range(900)], minlength=ACTIONS)
    assert counts[1] == counts[4] == 0 and counts[[0, 2, 3]].min() > 240


def test_no_valid_action_and_bad_shapes_raise():
    agent = DQNAgent(OBS, ACTIONS, cfg(), seed=0)
    with pytest.raises(ValueError, match="no valid action"):
        agent.act(np.zeros(OBS), np.zeros(ACTIONS, bool))
    with pytest.raises(ValueError, match="obs_dim=6"):
        agent.act(np.zeros(OBS + 1), np.ones(ACTIONS, bool))
    with pytest.raises(ValueError, match="bool array"):
        agent.act(np.zeros(OBS), np.ones(ACTIONS))
    with pytest.raises(ValueError, match="action"):
        agent.remember(np.zeros(OBS), ACTIONS, 0.0, np.zeros(OBS), np.ones(ACTIONS, bool), False)


def test_epsilon_schedule_is_linear_and_counts_exploring_calls_only():
    agent = DQNAgent(OBS, ACTIONS, cfg(epsilon_start=0.5, epsilon_end=0.1, epsilon_decay_steps=4), seed=0)
    mask = np.ones(ACTIONS, bool)
    seen = []
    for _ in range(6):
        seen.append(agent.epsilon)
        agent.act(np.zeros(OBS), mask, explore=False)  # greedy calls do not advance ε
        agent.act(np.zeros(OBS), mask)
    assert np.allclose(seen, [0.5, 0.4, 0.3, 0.2, 0.1, 0.1])
    assert agent.act_steps == 6


def test_learns_a_trivial_bandit_and_td_error_falls():
    agent = DQNAgent(OBS, ACTIONS, cfg(epsilon_start=1.0, epsilon_end=1.0), seed=0)
    rng = np.random.default_rng(0)
    bandit(agent, 200, rng)
    assert agent.learn() is not None
    losses = [agent.learn() for _ in range(300)]
    assert np.mean(losses[-30:]) < 0.2 * np.mean(losses[:30])
    picks = [agent.act(rng.normal(size=OBS), np.ones(ACTIONS, bool), explore=False) for _ in range(50)]
    assert picks == [2] * 50
    q = agent.q_values(rng.normal(size=(10, OBS)))
    assert q.shape == (10, ACTIONS) and np.allclose(q[:, 2], 1.0, atol=0.25)


def test_bootstrap_uses_only_valid_next_actions():
    """Two-step chain, only action 0 valid at step 2 (paying 1): Q(s0, ·) ≈ γ · 1 = 0.9, not 0."""
    agent = DQNAgent(2, 3, cfg(batch_size=6, target_sync=10, gamma=0.9), seed=0)
    s0, s1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    only0 = np.array([True, False, False])
    for a in range(3):
        agent.remember(s1, a, 1.0 if a == 0 else 5.0, s1, np.zeros(3, bool), True)
    for a in range(3):
        agent.remember(s0, a, 0.0, s1, only0, False)
    for _ in range(400):
        agent.learn()
    assert np.allclose(agent.q_values(s0), 0.9, atol=0.1)  # invalid actions 1, 2 (worth 5) are not bootstrapped


def test_learn_waits_for_a_batch():
    agent = DQNAgent(OBS, ACTIONS, cfg(batch_size=16), seed=0)
    bandit(agent, 15, np.random.default_rng(0))
    assert agent.learn() is None and agent.learn_steps == 0


def test_target_synced_every_target_sync_steps():
    agent = DQNAgent(OBS, ACTIONS, cfg(target_sync=5), seed=0)
    bandit(agent, 64, np.random.default_rng(0))

    def same() -> bool:
        return all(torch.equal(a, b) for a, b in zip(agent.online.parameters(), agent.target.parameters()))

    assert same()
    for step in range(1, 11):
        agent.learn()
        assert same() == (step % 5 == 0), step


def test_same_seed_same_run_different_seed_differs():
    def run(seed):
        agent = DQNAgent(OBS, ACTIONS, cfg(), seed=seed)
        bandit(agent, 40, np.random.default_rng(5))
        return [agent.learn() for _ in range(5)]

    assert run(3) == run(3) and run(3) != run(4)


def test_save_load_continues_identically(tmp_path):
    def cont(agent, rng):
        acts = []
        for _ in range(20):
            obs = rng.normal(size=OBS)
            a = agent.act(obs, np.ones(ACTIONS, bool))
            agent.remember(obs, a, float(a == 2), obs, np.zeros(ACTIONS, bool), True)
            acts.append(a)
        return acts, [agent.learn() for _ in range(10)]

    for opt in ("sgd", "adam"):
        c = cfg(optimizer=opt, replay_size=64)  # the ring buffer wraps around before the save
        agent = DQNAgent(OBS, ACTIONS, c, seed=7)
        bandit(agent, 80, np.random.default_rng(0))
        for _ in range(12):
            agent.learn()
        agent.save(tmp_path / opt / "agent.pt")
        expected = cont(agent, np.random.default_rng(9))
        torch.load(tmp_path / opt / "agent.pt", weights_only=True)  # plain tensors, ints and strings only
        restored = DQNAgent.load(tmp_path / opt / "agent.pt", c, obs_dim=OBS, n_actions=ACTIONS)
        assert restored.act_steps == 80 and restored.learn_steps == 12 and restored.replay.size == 64
        assert cont(restored, np.random.default_rng(9)) == expected
    assert not list(tmp_path.rglob(".*tmp*"))


def test_load_errors_name_the_file(tmp_path):
    c = cfg()
    DQNAgent(OBS, ACTIONS, c, seed=0).save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt.*obs_dim is 6, expected 7"):
        DQNAgent.load(tmp_path / "a.pt", c, obs_dim=7)
    with pytest.raises(ValueError, match=r"a\.pt.*n_actions is 5, expected 4"):
        DQNAgent.load(tmp_path / "a.pt", c, n_actions=4)
    with pytest.raises(ValueError, match=r"a\.pt.*hidden"):
        DQNAgent.load(tmp_path / "a.pt", cfg(hidden=16))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        DQNAgent.load(tmp_path / "missing.pt", c)
    (tmp_path / "bad.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="bad.pt"):
        DQNAgent.load(tmp_path / "bad.pt", c)


# ---------------------------------------------------------------- the learning schedule (dral.learn_*)
def dral(seed: int = 0, **kw):
    """A small DralStrategy (ns=3) with ``kw`` overriding its DralConfig."""
    from reidloop.strategies import build_strategy

    base = dict(ns=3, kmax=3, kappa=2, hidden=16, layers=2, batch_size=4, replay_size=64, target_sync=10)
    base.update(kw)
    return build_strategy("dral", DralConfig(**base), seed=seed)


def feed(strategy, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` answered questions of random states through select/observe, as the engine does; the picks."""
    from reidloop.strategies import Transition

    od, ns = strategy.agent.obs_dim, strategy.agent.n_actions
    picks = []
    for _ in range(n):
        obs, mask = rng.normal(size=od).astype(np.float32), rng.random(ns) < 0.7
        mask[rng.integers(ns)] = True
        a = strategy.select(None, obs, mask)
        nxt = rng.random(ns) < 0.5
        strategy.observe(Transition(obs, a, float(rng.normal()), rng.normal(size=od).astype(np.float32), nxt,
                                    not nxt.any(), answer=1, query=0, candidate=0))
        picks.append(a)
    return picks


@pytest.mark.parametrize("kw,field", [
    (dict(learn_every=0), "learn_every"), (dict(learn_updates=0), "learn_updates"),
    (dict(learn_batch=0), "learn_batch"), (dict(target_sync=0), "target_sync"),
    (dict(batch_size=1, learn_updates=3), "learn_updates"),  # round(1 * 1 / 3) = 0 transitions per step
])
def test_schedule_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        DralConfig(**kw)


def test_update_batch_holds_the_replay_ratio():
    assert (DralConfig().update_batch, DralConfig().replay_ratio) == (64, 64)
    assert (DralConfig(learn_every=16).update_batch, DralConfig(learn_every=16).replay_ratio) == (1024, 64)
    assert DralConfig(learn_every=16, learn_updates=4).update_batch == 256
    c = DralConfig(learn_every=16, learn_batch=128)
    assert (c.update_batch, c.replay_ratio) == (128, 8)


def old_learn(agent: DQNAgent):
    """DQNAgent.learn as it was before the schedule: one step of batch_size, target copy every target_sync steps."""
    from reidloop.dral.agent import GRAD_CLIP, q_target

    if agent.replay.size < agent.cfg.batch_size:
        return None
    batch = agent.replay.sample(agent._rng, agent.cfg.batch_size)
    b = {k: torch.from_numpy(v).to(agent.device) for k, v in batch.items()}
    q = agent.online(b["obs"]).gather(1, b["action"][:, None]).squeeze(1)
    with torch.no_grad():
        next_q = agent.target(b["next_obs"]).masked_fill(~b["next_mask"], -torch.inf).amax(1)
        live = b["next_mask"].any(1) & ~b["done"]
        target = q_target(b["reward"], next_q, live, agent.cfg.gamma, price=None)
    loss = torch.nn.functional.smooth_l1_loss(q, target)
    agent.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(agent.online.parameters(), GRAD_CLIP)
    agent.optimizer.step()
    agent.learn_steps += 1
    if agent.learn_steps % agent.cfg.target_sync == 0:
        agent.sync_target()
    return loss.item()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_default_schedule_is_the_old_one_bit_for_bit(optimizer):
    new, old = dral(optimizer=optimizer, seed=3), dral(optimizer=optimizer, seed=3)
    old.agent.learn = lambda: old_learn(old.agent)
    assert feed(new, 120, np.random.default_rng(0)) == feed(old, 120, np.random.default_rng(0))
    assert len(new.losses) == 117 and new.losses == old.losses  # exact floats, not approximately
    for a, b in zip([*new.agent.online.parameters(), *new.agent.target.parameters()],
                    [*old.agent.online.parameters(), *old.agent.target.parameters()]):
        assert torch.equal(a, b)


def test_batched_schedule_calls_the_learner_on_schedule():
    s = dral(batch_size=8, learn_every=4, learn_updates=2)
    steps: list[tuple[int, int]] = []
    real = s.agent._step
    s.agent._step = lambda n: (steps.append((s.steps, n)), real(n))[1]
    feed(s, 41, np.random.default_rng(0))
    # learner calls at answers 8, 12, …, 40 (none before batch_size=8 transitions), 2 steps of 8 * 4 / 2 each
    assert steps == [(a, 16) for a in range(8, 41, 4) for _ in range(2)]
    assert len(s.losses) == 9 and s.agent.learn_steps == 18
    s = dral(batch_size=8, learn_every=4, learn_batch=5)
    s.agent._step = lambda n: (steps.append((s.steps, n)), real(n))[1]
    steps.clear()
    feed(s, 12, np.random.default_rng(0))
    assert steps == [(8, 5), (12, 5)]


@pytest.mark.parametrize("kw,answers", [
    (dict(), [13, 23, 33]),  # one step per answer from answer 4: every 10 steps, as ever
    (dict(learn_every=4), [12, 20, 32, 40]),  # a step per 4 answers: the first call at or past each 10
    (dict(learn_every=4, learn_updates=2), [12, 20, 32, 40]),  # 2 steps per 4 answers: the same answers
])
def test_target_refresh_follows_answers_not_steps(kw, answers):
    s = dral(batch_size=4, target_sync=10, **kw)
    synced: list[int] = []
    real = s.agent.sync_target
    s.agent.sync_target = lambda: (synced.append(s.steps), real())[1]
    feed(s, 40, np.random.default_rng(0))
    assert synced == answers


def test_batched_schedule_checkpoint_continues_exactly(tmp_path):
    from reidloop.atomic import torch_save

    kw = dict(batch_size=8, learn_every=4, learn_updates=2, target_sync=6, seed=5)
    s = dral(**kw)
    feed(s, 30, np.random.default_rng(0))  # stops between learner calls (30 % 4 = 2)
    torch_save(s.state_dict(), tmp_path / "dral.pt")
    expected = feed(s, 30, np.random.default_rng(1)), list(s.losses)
    t = dral(**kw)
    t.load_state_dict(torch.load(tmp_path / "dral.pt", weights_only=True))
    t.losses = expected[1][: len(expected[1]) - 8]  # losses are a trace, not state: the 8 calls of answers 31-60
    assert (feed(t, 30, np.random.default_rng(1)), t.losses) == expected
