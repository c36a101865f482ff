import numpy as np
import pytest
import torch

from rlnotes import pg
from rlnotes.bandits import SoftmaxBandit


def test_pg_loss_gradient_equals_score_function_estimate():
    bandit = SoftmaxBandit(means=[1.0, -0.5, 0.3])
    theta0 = np.array([0.1, 0.4, -0.2])
    actions, rewards = bandit.sample(theta0, 64, np.random.default_rng(0))
    estimate = bandit.score_function_samples(theta0, 64, np.random.default_rng(0)).mean(axis=0)
    theta = torch.tensor(theta0, requires_grad=True)
    logp = torch.log_softmax(theta, -1)[torch.as_tensor(actions)]
    pg.pg_loss(logp, torch.as_tensor(rewards)).backward()
    np.testing.assert_allclose(-theta.grad.numpy(), estimate, atol=1e-12)


def test_pg_loss_value_and_shape_check():
    logp = torch.tensor([-1.0, -2.0])
    assert pg.pg_loss(logp, torch.tensor([1.0, 3.0])).item() == pytest.approx((1 + 6) / 2)
    with pytest.raises(ValueError, match="logp"):
        pg.pg_loss(logp, torch.ones(3))


def test_normalize():
    a = pg.normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert a.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert a.std().item() == pytest.approx(1.0, abs=1e-6)


def test_fit_value_reduces_error():
    from rlnotes.nets import ValueNet
    torch.manual_seed(0)
    v = ValueNet(2)
    obs = torch.randn(64, 2)
    target = obs.sum(1)
    first = 0.5 * (v(obs) - target).pow(2).mean().item()
    last = pg.fit_value(v, torch.optim.Adam(v.parameters(), 1e-2), obs, target, 50)
    assert last < 0.5 * first


def test_train_learns_cartpole_and_is_deterministic():
    h1 = pg.train("CartPole-v1", total_steps=20_000, seed=0)
    h2 = pg.train("CartPole-v1", total_steps=20_000, seed=0)
    np.testing.assert_array_equal(h1.episode_returns, h2.episode_returns)
    assert h1.final_mean_return() > 60  # a random policy averages about 22
    assert set(h1.updates) >= {"env_steps", "kl", "entropy", "value_loss", "seconds"}
    assert h1.update_array("env_steps")[-1] >= 20_000


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_steps=0), "total_steps"), (dict(gamma=1.5), "gamma"), (dict(lr=-1.0), "lr"),
    (dict(num_envs=0), "num_envs"), (dict(lam=-0.1), "lam")])
def test_train_bad_input(kwargs, name):
    args = dict(total_steps=1000, seed=0) | kwargs
    with pytest.raises(ValueError, match=name):
        pg.train("CartPole-v1", **args)


def test_train_rejects_continuous_actions():
    with pytest.raises(ValueError, match="Discrete"):
        pg.train("Pendulum-v1", total_steps=100, seed=0)
