"""The tabular MDP of chapter 1's "RL from zero": exact J, sampled estimators and GAE identities."""

import pytest
import torch

from rlnotes import mdp
from rlnotes.returns import gae


@pytest.fixture
def setup():
    M = mdp.TabularMDP.random(n_states=3, n_actions=2, horizon=4, gamma=0.9, seed=0)
    theta = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return M, theta


def _values_along(M, V, traj):
    """V_t(s_t) for every step of every trajectory, [H, n]."""
    return V[:-1][torch.arange(M.horizon)[:, None], traj.states]


def test_exact_return_three_ways(setup):
    M, theta = setup
    J = M.exact_return(theta)
    prob, G = M.enumerate_trajectories(theta)
    V, _ = M.values(theta)
    assert len(prob) == 6 ** 4
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert J.item() == pytest.approx((prob * G).sum().item(), abs=1e-12)
    assert J.item() == pytest.approx((M.mu0 * V[0]).sum().item(), abs=1e-12)


def test_one_step_mdp_is_a_bandit():
    R = torch.tensor([[1.0, -2.0, 0.5]])
    M = mdp.TabularMDP(torch.ones(1, 3, 1), R, torch.ones(1), horizon=1)
    theta = torch.tensor([[0.3, -0.1, 0.2]], dtype=torch.float64)
    pi = torch.softmax(theta[0], -1)
    assert M.exact_return(theta).item() == pytest.approx((pi * R[0].double()).sum().item(), abs=1e-15)


def test_monte_carlo_mean_matches_exact_return(setup):
    M, theta = setup
    traj = M.sample_trajectories(theta, 20_000, torch.Generator().manual_seed(0))
    G = mdp.reward_to_go(traj.rewards, M.gamma)[0]
    z = (G.mean() - M.exact_return(theta)) / (G.std() / len(G) ** 0.5)
    assert abs(z.item()) < 4
    # sampling repeats under the same seed
    again = M.sample_trajectories(theta, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(traj.states, again.states) and torch.equal(traj.actions, again.actions)


def test_advantages_average_to_zero_under_the_policy(setup):
    M, theta = setup
    V, Q = M.values(theta)
    A = Q - V[:-1, :, None]
    assert (M.policy(theta) * A).sum(-1).abs().max().item() < 1e-12


def test_reward_to_go_by_hand():
    r = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    assert mdp.reward_to_go(r, 0.5).squeeze().tolist() == pytest.approx([1 + 1 + 1, 2 + 2, 4])


@pytest.mark.parametrize("weights", ["whole", "reward_to_go", "baseline"])
def test_score_function_estimator_matches_autograd_of_exact_J(setup, weights):
    M, theta = setup
    th = theta.clone().requires_grad_(True)
    exact, = torch.autograd.grad(M.exact_return(th), th)
    traj = M.sample_trajectories(theta, 20_000, torch.Generator().manual_seed(0))
    G = mdp.reward_to_go(traj.rewards, M.gamma)
    V, _ = M.values(theta)
    w = {"whole": G[:1].expand_as(G),
         "reward_to_go": M.discounts() * G,
         "baseline": M.discounts() * (G - _values_along(M, V, traj))}[weights]
    samples = M.score_function_samples(theta, traj, w)
    z = (samples.mean(0) - exact) / (samples.std(0) / len(samples) ** 0.5)
    assert z.abs().max().item() < 4


def test_reward_to_go_and_baseline_lower_the_variance(setup):
    M, theta = setup
    traj = M.sample_trajectories(theta, 20_000, torch.Generator().manual_seed(0))
    G = mdp.reward_to_go(traj.rewards, M.gamma)
    V, _ = M.values(theta)
    var = lambda w: M.score_function_samples(theta, traj, w).var(0).sum().item()
    whole, causal = var(G[:1].expand_as(G)), var(M.discounts() * G)
    based = var(M.discounts() * (G - _values_along(M, V, traj)))
    assert based < causal < whole


def test_estimator_is_the_gradient_of_the_surrogate(setup):
    """Sample for sample, the closed-form score equals autograd through sum_t log pi(a_t|s_t) w_t."""
    M, theta = setup
    traj = M.sample_trajectories(theta, 50, torch.Generator().manual_seed(3))
    w = M.discounts() * mdp.reward_to_go(traj.rewards, M.gamma)
    th = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(th, -1)[traj.states, traj.actions]
    grad, = torch.autograd.grad((logp * w).sum(0).mean(), th)
    torch.testing.assert_close(M.score_function_samples(theta, traj, w).mean(0), grad)


@pytest.fixture
def rollout(setup):
    """Sampled rewards with an arbitrary (deliberately wrong) value function: the GAE identities are algebra."""
    M, theta = setup
    traj = M.sample_trajectories(theta, 64, torch.Generator().manual_seed(2))
    V, _ = M.values(theta)
    values = _values_along(M, V, traj) + torch.randn(4, 64, generator=torch.Generator().manual_seed(4),
                                                      dtype=torch.float64)
    last = torch.randn(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return traj.rewards, values, last, M.gamma


def test_gae_lambda_zero_is_the_td_residual(rollout):
    r, v, last, gamma = rollout
    adv, _ = gae(r, v, torch.zeros_like(r), last, gamma, 0.0)
    assert torch.equal(adv, mdp.td_residuals(r, v, last, gamma))


def test_gae_lambda_one_is_reward_to_go_minus_value(rollout):
    r, v, last, gamma = rollout
    adv, _ = gae(r, v, torch.zeros_like(r), last, gamma, 1.0)
    G = mdp.reward_to_go(r, gamma) + gamma ** torch.arange(4, 0, -1, dtype=torch.float64)[:, None] * last
    torch.testing.assert_close(adv, G - v, atol=1e-12, rtol=0)


def test_n_step_advantages_by_definition(rollout):
    r, v, last, gamma = rollout
    ns = mdp.n_step_advantages(r, v, last, gamma)
    T = len(r)
    v_ext = torch.cat([v, last[None]])
    for n in range(1, T + 1):
        for t in range(T):
            k = min(n, T - t)
            direct = sum(gamma ** l * r[t + l] for l in range(k)) + gamma ** k * v_ext[t + k] - v[t]
            torch.testing.assert_close(ns[n - 1, t], direct, atol=1e-12, rtol=0)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
def test_gae_is_the_lambda_mixture_of_n_step_advantages(rollout, lam):
    r, v, last, gamma = rollout
    adv, _ = gae(r, v, torch.zeros_like(r), last, gamma, lam)
    mixture = mdp.lambda_mixture(mdp.n_step_advantages(r, v, last, gamma), lam)
    torch.testing.assert_close(adv, mixture, atol=1e-12, rtol=0)


def test_mixture_weights_sum_to_one(rollout):
    """With every A^(n) equal to 1 the mixture is 1: the weights, tail included, sum to one."""
    ones = torch.ones(4, 4, 3, dtype=torch.float64)
    assert torch.allclose(mdp.lambda_mixture(ones, 0.7), torch.ones(4, 3, dtype=torch.float64))


def test_bad_input():
    P, R, mu0 = torch.ones(2, 2, 2) / 2, torch.zeros(2, 2), torch.ones(2) / 2
    with pytest.raises(ValueError, match="P must hold probabilities"):
        mdp.TabularMDP(torch.ones(2, 2, 2), R, mu0, 3)
    with pytest.raises(ValueError, match="R must have shape"):
        mdp.TabularMDP(P, torch.zeros(3, 2), mu0, 3)
    with pytest.raises(ValueError, match="gamma"):
        mdp.TabularMDP(P, R, mu0, 3, gamma=1.5)
    with pytest.raises(ValueError, match="horizon"):
        mdp.TabularMDP(P, R, mu0, 0)
    M = mdp.TabularMDP(P, R, mu0, 3)
    with pytest.raises(ValueError, match="theta must have shape"):
        M.exact_return(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="theta must be finite"):
        M.exact_return(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="generator"):
        M.sample_trajectories(torch.zeros(2, 2), 4, generator=0)
    with pytest.raises(ValueError, match="lam"):
        mdp.lambda_mixture(torch.ones(2, 2, 1), 1.5)


def test_extreme_logits_stay_finite():
    M = mdp.TabularMDP.random(seed=3)
    theta = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.0, 1e4]], dtype=torch.float64, requires_grad=True)
    J = M.exact_return(theta)
    grad, = torch.autograd.grad(J, theta)
    assert torch.isfinite(J) and torch.isfinite(grad).all()
