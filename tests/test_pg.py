import numpy as np
import pytest
import torch

from rlnotes import pg
from rlnotes.bandits import SoftmaxBandit
from rlnotes.nets import CategoricalPolicy, ValueNet


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


def test_train_learns_cartpole_and_is_deterministic():
    out1 = pg.train("CartPole-v1", total_steps=20_000, seed=0)
    out2 = pg.train("CartPole-v1", total_steps=20_000, seed=0)
    h1, h2 = out1.history, out2.history
    np.testing.assert_array_equal(h1.episode_returns, h2.episode_returns)
    assert h1.final_mean_return() > 60  # a random policy averages about 22
    assert set(h1.updates) == {"env_steps", "kl/exact_per_state", "entropy", "loss/value", "seconds"}
    assert h1.update_array("env_steps")[-1] >= 20_000
    assert isinstance(out1.policy, CategoricalPolicy) and isinstance(out1.value_fn, ValueNet)
    for p, q in zip(out1.policy.parameters(), out2.policy.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_steps=0), "total_steps"), (dict(gamma=1.5), "gamma"), (dict(lr=-1.0), "lr"),
    (dict(num_envs=0), "num_envs"), (dict(lam=-0.1), "lam"), (dict(vf_iters=0), "vf_iters"),
    (dict(vf_lr=0.0), "vf_lr"), (dict(num_steps=-1), "num_steps")])
def test_train_bad_input(kwargs, name):
    args = dict(total_steps=1000, seed=0) | kwargs
    with pytest.raises(ValueError, match=name):
        pg.train("CartPole-v1", **args)


def test_train_rejects_continuous_actions():
    with pytest.raises(ValueError, match="Discrete"):
        pg.train("Pendulum-v1", total_steps=100, seed=0)
