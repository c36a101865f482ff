"""Chapter 1's run summaries: random_policy_returns, largest_drop, seed_summary, collapse_update."""

import numpy as np
import pytest

from rlnotes import pg
from rlnotes.trainer import History


def _history(returns, entropy=(0.5, 0.4), kl=(1e-3, 2e-3)):
    h = History()
    for i, r in enumerate(returns):
        h.add_episode(10 * (i + 1), r)
    for e, k in zip(entropy, kl):
        h.log({"kl/exact_per_state": k}, entropy=e)
    return h


def test_random_policy_returns_repeat_and_match_a_hand_loop():
    import gymnasium as gym

    out = pg.random_policy_returns("CartPole-v1", episodes=5, seed=3)
    np.testing.assert_array_equal(out, pg.random_policy_returns("CartPole-v1", episodes=5, seed=3))
    env = gym.make("CartPole-v1")
    env.action_space.seed(3)
    by_hand = []
    for i in range(5):
        env.reset(seed=3 + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total, done = total + r, term or trunc
        by_hand.append(total)
    np.testing.assert_array_equal(out, by_hand)
    assert out.shape == (5,) and np.all((out >= 8) & (out <= 500))
    assert not np.array_equal(out, pg.random_policy_returns("CartPole-v1", episodes=5, seed=4))


@pytest.mark.parametrize("kw, exc, match", [({"episodes": 0}, ValueError, "episodes"),
                                            ({"episodes": 2.5}, TypeError, "episodes"),
                                            ({"seed": -1}, ValueError, "seed")])
def test_random_policy_returns_rejects_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        pg.random_policy_returns("CartPole-v1", **kw)


def test_largest_drop_measures_the_fall_from_the_running_best():
    assert pg.largest_drop(_history([10, 20, 30]), window=1) == 0
    assert pg.largest_drop(_history([10, 50, 20, 40, 5]), window=1) == 45
    # window 2: means 10, 30, 35, 30, 22.5 -> best 35, lowest after it 22.5
    assert pg.largest_drop(_history([10, 50, 20, 40, 5]), window=2) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="no finished episode"):
        pg.largest_drop(History())
    with pytest.raises(ValueError, match="window"):
        pg.largest_drop(_history([1.0]), window=0)


def test_seed_summary_per_seed_and_pooled():
    a = _history([10, 50, 20, 40, 5], entropy=(0.6, 0.3), kl=(1e-3, 4e-3))
    b = _history([100, 200], entropy=(0.5, 0.001), kl=(2.0, 3e-3))
    s = pg.seed_summary({0: a, 1: b}, window=1)
    np.testing.assert_allclose(s["final"], [5, 200])
    np.testing.assert_allclose(s["best"], [50, 200])
    np.testing.assert_allclose(s["kept"], [0.1, 1.0])
    np.testing.assert_allclose(s["drop"], [45, 0])
    np.testing.assert_allclose(s["max_kl"], [4e-3, 2.0])
    np.testing.assert_allclose(s["entropy"], [0.3, 0.001])
    assert s["median_kl"] == pytest.approx(np.median([1e-3, 4e-3, 2.0, 3e-3]))
    assert s["max_kl_all"] == 2.0
    assert pg.seed_summary([a, b], window=1)["final"].tolist() == s["final"].tolist()
    with pytest.raises(TypeError, match="histories"):
        pg.seed_summary({})
    with pytest.raises(TypeError, match="histories"):
        pg.seed_summary([a, "b"])
    with pytest.raises(KeyError, match="no metric"):
        pg.seed_summary([a], kl_key="kl/other")


def test_collapse_update_finds_where_entropy_stays_low():
    h = _history([1.0], entropy=(0.6, 0.005, 0.3, 0.008, 0.001), kl=(1e-3,) * 5)
    assert pg.collapse_update(h) == 3           # dips at 1 but recovers at 2; stays low from 3
    assert pg.collapse_update(h, threshold=0.0001) is None
    assert pg.collapse_update(h, threshold=1.0) == 0
    assert pg.collapse_update(_history([1.0], entropy=(0.5, 0.4))) is None
    with pytest.raises(ValueError, match="threshold"):
        pg.collapse_update(h, threshold=0)
