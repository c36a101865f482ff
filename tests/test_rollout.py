import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from rlnotes.kl import mean_kl
from rlnotes.nets import CategoricalPolicy, ValueNet
from rlnotes.rollout import Runner, make_envs
from rlnotes.trainer import History


class Always:
    """A policy that always takes ``action``: makes a rollout comparable with hand stepping."""

    def __init__(self, action, n_actions=2):
        self.action, self.n = action, n_actions

    def __call__(self, obs):
        logits = torch.full((len(obs), self.n), -1e9)
        logits[:, self.action] = 0.0
        return Categorical(logits=logits)


def constant_value(c):
    return lambda obs: torch.full((len(obs),), float(c))


def test_rollout_matches_hand_stepped_environments():
    seed, N, T = 3, 2, 40
    runner = Runner("CartPole-v1", N, seed, 0.99, History())
    batch = runner.rollout(Always(1), constant_value(0.0), T)
    for i in range(N):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + i)
        returns, ret = [], 0.0
        for t in range(T):
            np.testing.assert_allclose(batch.obs[t, i].numpy(), obs, rtol=1e-6)
            obs, r, term, trunc, _ = env.step(1)
            ret += r
            assert batch.dones[t, i].item() == float(term or trunc)
            if term or trunc:
                returns.append(ret)
                ret = 0.0
                obs, _ = env.reset()
        assert batch.rewards[:, i].sum().item() == pytest.approx(T)
    # every finished episode is in the history, with its return and the step it ended at
    assert len(runner.history.episode_returns) > 0
    assert runner.steps == N * T and runner.history.episode_ends.max() <= N * T


def test_truncation_bootstraps_with_value_of_final_observation():
    runner = Runner("CartPole-v1", 2, 0, 0.9, History(), max_episode_steps=5)
    batch = runner.rollout(Always(0), constant_value(10.0), 12)
    ends = batch.dones.bool()
    assert ends[4].all() and ends[9].all()
    torch.testing.assert_close(batch.rewards[ends], torch.full((int(ends.sum()),), 1.0 + 0.9 * 10.0))
    torch.testing.assert_close(batch.rewards[~ends], torch.ones(int((~ends).sum())))
    assert runner.history.episode_returns.tolist() == [5.0] * 4  # undiscounted, no bootstrap


def test_continuous_action_space_is_rejected():
    with pytest.raises(ValueError, match="Discrete"):
        make_envs("Pendulum-v1", 1, 0)


def test_history_statistics():
    h = History()
    for step, ret in zip([10, 20, 30, 40], [1.0, 3.0, 5.0, 7.0]):
        h.add_episode(step, ret)
    np.testing.assert_allclose(h.moving_mean(2), [1.0, 2.0, 4.0, 6.0])
    assert h.final_mean_return(2) == 6.0
    assert h.steps_to_reach(4.0, window=2) == 30
    assert h.steps_to_reach(100.0, window=2) == float("inf")
    np.testing.assert_allclose(h.curve(np.array([5, 25, 100]), window=2), [np.nan, 2.0, 6.0])
    h.log(kl=0.5)
    h.log(kl=torch.tensor(0.25))
    np.testing.assert_allclose(h.update_array("kl"), [0.5, 0.25])
    # keys with a slash come in a dict, plain ones as keywords, both in one call
    h.log({"kl/exact_per_state": torch.tensor(0.125)}, entropy=0.5)
    np.testing.assert_allclose(h.update_array("kl/exact_per_state"), [0.125])
    np.testing.assert_allclose(h.update_array("entropy"), [0.5])
    assert len(h) == 2  # the number of updates: the longest series
    with pytest.raises(KeyError, match="no metric 'loss' was logged; logged: .*'kl'"):
        h.update_array("loss")
    np.testing.assert_array_equal(h.episode_ends, [10, 20, 30, 40])
    assert h.episode_ends.dtype == np.int64


def test_networks_shapes_and_kl():
    policy, value = CategoricalPolicy(4, 3), ValueNet(4)
    obs = torch.randn(7, 4)
    dist = policy(obs)
    assert dist.probs.shape == (7, 3) and value(obs).shape == (7,)
    assert policy.logp(obs, torch.zeros(7, dtype=torch.long)).shape == (7,)
    assert mean_kl(dist.logits, dist.logits).item() == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(policy.log_probs(obs), dist.logits)
    # the small output gain starts the policy close to uniform
    assert (dist.probs - 1 / 3).abs().max() < 0.05


def test_an_old_gymnasium_is_refused_with_a_clear_message(monkeypatch):
    import gymnasium
    monkeypatch.setattr(gymnasium, "__version__", "1.3.0")
    with pytest.raises(ImportError, match="gymnasium >= 1.4"):
        make_envs("CartPole-v1", 1, 0)
