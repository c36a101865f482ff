"""rlnotes.pg: the policy-gradient loss, the trainer (what it learns, what it refuses), and chapter 1's
run summaries (random_policy_returns, largest_drop, seed_summary, collapse_update)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlnotes import pg
from rlnotes.bandits import SoftmaxBandit
from rlnotes.nets import CategoricalPolicy, ValueNet
from rlnotes.returns import normalize
from rlnotes.trainer import History, TrainingInterrupted, TrainResult


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


def test_pg_refuses_zero_value_iterations_by_name():
    with pytest.raises(ValueError, match="vf_iters must be >= 1, got 0"):
        pg.train(total_steps=64, seed=0, vf_iters=0)


def test_a_batch_of_one_step_runs_without_normalisation_and_is_refused_with_it():
    out = pg.train(total_steps=4, seed=0, num_envs=1, num_steps=1, normalize_advantages=False)
    assert len(out.history) == 4 and np.isfinite(out.history.update_array("loss/value")).all()
    with pytest.raises(ValueError, match=r"num_envs \* num_steps must be >= 2 to normalise advantages per batch "
                                         r"\(got 1 \* 1\); or pass normalize_advantages=False"):
        pg.train(total_steps=4, seed=0, num_envs=1, num_steps=1)
    assert normalize(torch.tensor([3.0])).item() == 0.0


# ----- run summaries: random_policy_returns, largest_drop, seed_summary, collapse_update ------------

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


def test_pg_loss_refuses_an_empty_batch():
    with pytest.raises(ValueError, match=r"logp must hold at least one sample, got an empty tensor"):
        pg.pg_loss(torch.zeros(0), torch.zeros(0))


def test_pg_loss_refuses_non_finite_input_naming_the_argument():
    with pytest.raises(ValueError, match=r"advantages must be finite \(it holds NaN or inf\)"):
        pg.pg_loss(torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"logp must be finite"):
        pg.pg_loss(torch.tensor([-math.inf, -2.0, -0.5]), torch.zeros(3))


def test_pg_loss_names_arguments_that_are_not_float_tensors():
    with pytest.raises(TypeError, match=r"logp must be a torch.Tensor, got list \[0.1, 0.2\]"):
        pg.pg_loss([0.1, 0.2], torch.ones(2))
    with pytest.raises(TypeError, match="advantages must be a torch.Tensor, got NoneType"):
        pg.pg_loss(torch.zeros(2), None)


# --- issue 27, round two: the caller's global settings and an interrupt before the first update ---------

SMALL = dict(total_steps=32, seed=0, num_envs=2, num_steps=8)


def _params(result):
    return torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])


class ResetInterrupted(gym.Env):
    """An environment whose reset is interrupted (a Ctrl-C while the environments start)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        raise KeyboardInterrupt


def test_train_interrupted_while_the_environments_reset_gives_the_partial_result():
    gym.register(id="Test27/reset_interrupted-v0", entry_point=ResetInterrupted)
    with pytest.raises(TrainingInterrupted, match="after 0 complete updates") as stop:
        pg.train("Test27/reset_interrupted-v0", **SMALL)
    assert isinstance(stop.value.result, TrainResult) and stop.value.result.model is None
    assert len(stop.value.result.history) == 0
