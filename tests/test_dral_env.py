"""QueryEpisodeEnv: observation (Eq. 4-5 after Eq. 6-8), reward (Eq. 9), masking, termination, known answers."""
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from reidloop.config.schema import DralConfig
from reidloop.dral.env import QueryEpisodeEnv, nearest_candidates

# {q, g1, g2, g3}; normalised distances D4/4: q-g1 .25, q-g2 .5, q-g3 1, g1-g2 .5, g1-g3 .75, g2-g3 .25
D4 = np.array([
    [0.0, 1.0, 2.0, 4.0],
    [1.0, 0.0, 2.0, 3.0],
    [2.0, 2.0, 0.0, 1.0],
    [4.0, 3.0, 1.0, 0.0],
])
QUERY, CANDS = 7, np.array([11, 12, 13])
TRUTH = {11: 1, 12: 1, 13: -1}  # the annotator's answers about the query 7


class Oracle:
    def __init__(self):
        self.calls = []

    def __call__(self, query, cand):
        self.calls.append((query, cand))
        return TRUTH[cand]


def make_env(kmax=2, answer_fn=None):
    return QueryEpisodeEnv(ns=3, kmax=kmax, kappa=2, thred=0.4, margin=0.2, answer_fn=answer_fn)


def opts(**extra):
    return {"query": QUERY, "candidates": CANDS, "distances": D4, **extra}


def sparse_part(obs):
    return obs[:16].reshape(4, 4)


def test_reset_observation_is_kappa_reciprocal_of_eq4():
    env = make_env()
    obs, info = env.reset(options=opts())
    assert obs.dtype == np.float32 and obs.shape == (19,) and obs in env.observation_space
    # Eq. 4 then Eq. 5 with κ=2 (worked out in test_dral_state)
    np.testing.assert_allclose(sparse_part(obs), [
        [0.00, 0.75, 0.50, 0.00],
        [0.75, 0.00, 0.00, 0.00],
        [0.50, 0.00, 0.00, 0.75],
        [0.00, 0.00, 0.75, 0.00],
    ])
    np.testing.assert_array_equal(obs[16:], [0, 0, 0])
    np.testing.assert_array_equal(info["action_mask"], [True, True, True])
    assert env.action_space.n == 3 and env.questions_asked == 0


def test_episode_by_hand_rewards_states_and_termination():
    oracle = Oracle()
    env = make_env(kmax=2, answer_fn=oracle)
    env.reset(options=opts())

    # ask g1 (+1): R = [.2 + (d(q,g1)=.25 - 1)]+ = 0
    # dense row 0 -> [0, 1, (.5+.5)/2, (0+.25)/2] = [0, 1, .5, .125]; κ=2 keeps (0,1), (0,2), (2,3)
    obs, r, term, trunc, info = env.step(0)
    assert oracle.calls == [(QUERY, 11)]
    assert r == pytest.approx(0.0) and not term and trunc is False
    np.testing.assert_allclose(sparse_part(obs), [
        [0.0, 1.0, 0.5, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.0, 0.75],
        [0.0, 0.0, 0.75, 0.0],
    ])
    np.testing.assert_array_equal(obs[16:], [1, 0, 0])
    np.testing.assert_array_equal(info["action_mask"], [False, True, True])
    assert info["candidate"] == 11 and info["answer"] == 1

    # ask g3 (-1): Xp={q,g1}: max(1, .75)=1, no negatives -> 1: R = .2 - (1 - 1) = .2
    # dense row 0 -> Sim(q,g3)=0; Sim(g3,g2)=.75>.4: max(.5-.75, 0)=0 -> [0, 1, 0, 0]
    # N(0)={1,2}, N(1)={0,2}, N(2)={3,1}, N(3)={2,1}: keeps (0,1), (1,2), (2,3)
    obs, r, term, trunc, info = env.step(2)
    assert r == pytest.approx(0.2)
    np.testing.assert_allclose(sparse_part(obs), [
        [0.0, 1.0, 0.0, 0.0],
        [1.0, 0.0, 0.5, 0.0],
        [0.0, 0.5, 0.0, 0.75],
        [0.0, 0.0, 0.75, 0.0],
    ])
    np.testing.assert_array_equal(obs[16:], [1, 0, -1])
    assert term and env.questions_asked == 2  # kmax reached
    assert env.positives == [11] and env.negatives == [13]
    with pytest.raises(RuntimeError, match="kmax=2"):
        env.step(1)


def test_masked_action_raises_naming_it_and_mask_shrinks():
    oracle = Oracle()
    env = make_env(kmax=3, answer_fn=oracle)
    _, info = env.reset(options=opts())
    assert info["action_mask"].sum() == 3
    _, _, _, _, info = env.step(1)
    assert info["action_mask"].sum() == 2
    with pytest.raises(ValueError, match="action 1 is masked"):
        env.step(1)
    assert len(oracle.calls) == 1  # the annotator is not bothered for a masked action
    with pytest.raises(ValueError, match="action 3"):
        env.step_with_answer(3, 1)
    _, _, _, _, info = env.step(0)
    assert info["action_mask"].sum() == 1


def test_known_answers_are_free_and_shape_the_reward():
    env = make_env(kmax=2)
    obs, info = env.reset(options=opts(known={2: -1}))
    # g3 known -1: Sim(q,g3)=0; Sim(g3,g1)=.25<=.4 keeps .75; Sim(g3,g2)=.75>.4: max(.5-.75,0)=0
    assert env.questions_asked == 0 and env.negatives == [13] and env.positives == []
    np.testing.assert_array_equal(info["action_mask"], [True, True, False])
    np.testing.assert_array_equal(obs[16:], [0, 0, -1])
    # dense row 0 = [0, .75, 0, 0]; N(0)={1,2}, N(1)={0,2}, N(2)={3,1}, N(3)={2,1}: keeps (0,1), (1,2), (2,3)
    np.testing.assert_allclose(sparse_part(obs), [
        [0.00, 0.75, 0.00, 0.00],
        [0.75, 0.00, 0.50, 0.00],
        [0.00, 0.50, 0.00, 0.75],
        [0.00, 0.00, 0.75, 0.00],
    ])
    # g1 answered -1 with Xn={g3}: .2 - (d(q,g1)=.25 - d(g3,g1)=.75) = .7 (it would be .95 with no negatives)
    _, r, term, _, _ = env.step_with_answer(0, -1)
    assert r == pytest.approx(0.7) and not term
    env.reset(options=opts())
    assert env.step_with_answer(0, -1)[1] == pytest.approx(0.95)


def test_terminates_when_nothing_left_to_ask():
    env = make_env(kmax=3, answer_fn=Oracle())
    env.reset(options=opts(known={0: 1}))
    assert not env.step(1)[2]
    _, _, term, _, info = env.step(2)
    assert term and env.questions_asked == 2 and not info["action_mask"].any()


def test_reset_replays_previous_options_and_clears_episode():
    env = make_env(kmax=3, answer_fn=Oracle())
    with pytest.raises(ValueError, match="first reset needs options"):
        env.reset()
    first, _ = env.reset(options=opts(known={1: 1}))
    env.step(0)
    again, info = env.reset()
    np.testing.assert_array_equal(first, again)
    assert env.questions_asked == 0 and env.positives == [12] and info["action_mask"].sum() == 2


@pytest.mark.parametrize("bad, match", [
    ({"query": 7, "candidates": CANDS}, "distances"),
    (opts(candidates=np.array([11, 12])), "shape \\(3,\\)"),
    (opts(candidates=np.array([11, 11, 12])), "distinct"),
    (opts(candidates=np.array([7, 11, 12])), "distinct"),
    (opts(distances=np.zeros((3, 3))), "shape \\(4, 4\\)"),
    (opts(known={5: 1}), "known"),
    (opts(distances=D4 - 1.0), "options\\['distances'\\]: distance matrix has negative"),
    (opts(known={0: 0}), "known"),
])
def test_reset_rejects_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        make_env().reset(options=bad)


def test_step_without_answer_fn_and_bad_answer():
    env = make_env()
    env.reset(options=opts())
    with pytest.raises(RuntimeError, match="step_with_answer"):
        env.step(0)
    with pytest.raises(ValueError, match="answer y"):
        env.step_with_answer(0, 0)


def test_from_config_and_gymnasium_checker():
    cfg = DralConfig(ns=5, kmax=1, kappa=2)
    rng = np.random.default_rng(0)
    F = rng.normal(size=(6, 4))
    D = np.linalg.norm(F[:, None] - F[None], axis=-1)
    env = QueryEpisodeEnv.from_config(cfg, answer_fn=lambda q, g: 1 if g % 2 else -1)
    assert env.action_space.n == 5 and env.observation_space.shape == (36 + 5,)
    env.reset(options={"query": 0, "candidates": np.arange(1, 6), "distances": D})
    # kmax=1: the checker's random actions can never repeat (a repeat would be a masked action)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)


def test_nearest_candidates():
    D = np.array([
        [0.0, 3.0, 1.0, 2.0, 1.0, 5.0],
        [3.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
        [2.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
        [5.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    ])
    np.testing.assert_array_equal(nearest_candidates(D, 0, 3), [2, 4, 3])  # tie 2/4: lower index first
    np.testing.assert_array_equal(nearest_candidates(D[0], 0, 3, exclude=[4]), [2, 3, 1])
    with pytest.raises(ValueError, match="need ns=5"):
        nearest_candidates(D, 0, 5, exclude=[1])
    with pytest.raises(ValueError, match="outside the pool"):
        nearest_candidates(D, 6, 2)
