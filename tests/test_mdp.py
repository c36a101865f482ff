"""rlnotes.mdp, the tabular MDP: chapter 1's exact J, sampled estimators and GAE identities; chapter
2's TRPO surrogate L (Schulman et al. 2015, eq. 3), the mean KL, the Fisher matrix and the natural
gradient, each against a second, independent computation."""

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


# ----- TRPO's surrogate, the mean KL, the Fisher matrix, the natural gradient -----------------------

def _random(seed, S=3, A=2, H=4, gamma=0.9):
    M = mdp.TabularMDP.random(n_states=S, n_actions=A, horizon=H, gamma=gamma, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    theta_old = torch.randn(S, A, generator=g, dtype=torch.float64)
    theta = theta_old + torch.randn(S, A, generator=g, dtype=torch.float64)
    return M, theta_old, theta


CASES = [(0, 3, 2, 4, 0.9), (1, 4, 3, 5, 0.95), (2, 2, 4, 3, 1.0), (3, 5, 2, 6, 0.5)]
TRAP_OLD = torch.tensor([[0.0, -2.0], [0.0, -2.0], [0.0, 0.0]], dtype=torch.float64)  # chapter 2's theta_old


def _advantages(M, theta):
    V, Q = M.values(theta)
    return Q - V[:-1, :, None]


def _trajectories(M):
    """Every (s_0, a_0, ..., s_{H-1}, a_{H-1}) as two [n, H] index tensors (the grid of enumerate_trajectories)."""
    S, A = M.shape
    grids = torch.cartesian_prod(*[torch.arange(S), torch.arange(A)] * M.horizon).reshape(-1, 2 * M.horizon)
    return grids[:, 0::2], grids[:, 1::2]


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES)
def test_surrogate_equals_J_in_value_and_gradient_at_theta_old(seed, S, A, H, gamma):
    M, theta_old, _ = _random(seed, S, A, H, gamma)
    assert M.surrogate(theta_old, theta_old).item() == pytest.approx(M.exact_return(theta_old).item(), abs=1e-10)
    th = theta_old.clone().requires_grad_(True)
    grad_J, = torch.autograd.grad(M.exact_return(th), th)
    th = theta_old.clone().requires_grad_(True)
    grad_L, = torch.autograd.grad(M.surrogate(th, theta_old), th)
    assert grad_J.abs().max() > 1e-3                                   # a real gradient, not two zeros
    assert (grad_L - grad_J).abs().max().item() < 1e-10


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES[:3])
def test_surrogate_is_the_importance_weighted_sum_over_every_old_trajectory(seed, S, A, H, gamma):
    # L = J_old + sum_tau p_old(tau) sum_t gamma^t pi(a_t|s_t) / pi_old(a_t|s_t) A_t^old(s_t, a_t): the ratio form
    # of eq-surrogate with exact expectations, by enumeration instead of state-distribution propagation.
    M, theta_old, theta = _random(seed, S, A, H, gamma)
    prob_old, _ = M.enumerate_trajectories(theta_old)
    s, a = _trajectories(M)
    ratio = M.policy(theta)[s, a] / M.policy(theta_old)[s, a]                      # [n, H]
    adv = _advantages(M, theta_old)[torch.arange(H), s, a]                           # [n, H]
    discount = M.gamma ** torch.arange(H, dtype=torch.float64)
    brute = M.exact_return(theta_old) + (prob_old * (ratio * adv * discount).sum(-1)).sum()
    assert M.surrogate(theta, theta_old).item() == pytest.approx(brute.item(), abs=1e-10)
    assert abs(M.surrogate(theta, theta_old) - M.exact_return(theta)).item() > 1e-4  # and it is not J there


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES)
def test_J_is_the_same_sum_over_the_new_policys_states(seed, S, A, H, gamma):
    # the performance-difference lemma: with d_t of the NEW policy instead of the old one, the sum is J exactly
    M, theta_old, theta = _random(seed, S, A, H, gamma)
    d_new = M.state_distributions(theta)
    discount = M.gamma ** torch.arange(H, dtype=torch.float64)
    gain = torch.einsum("t,ts,sa,tsa->", discount, d_new, M.policy(theta), _advantages(M, theta_old))
    assert (M.exact_return(theta_old) + gain).item() == pytest.approx(M.exact_return(theta).item(), abs=1e-10)


def test_state_distributions_sum_to_one_and_give_J():
    M, theta, _ = _random(0)
    d = M.state_distributions(theta)
    assert d.shape == (M.horizon, 3) and torch.allclose(d.sum(-1), torch.ones(M.horizon, dtype=torch.float64))
    J = sum(M.gamma ** t * (d[t, :, None] * M.policy(theta) * M.R).sum() for t in range(M.horizon))
    assert J.item() == pytest.approx(M.exact_return(theta).item(), abs=1e-12)


def test_one_step_mdp_surrogate_is_J_everywhere():
    # a bandit (H = 1): one state distribution for every policy, so L = J for every theta (section 2.2)
    M = mdp.TabularMDP(torch.ones(1, 3, 1), torch.tensor([[1.0, -2.0, 0.5]]), torch.ones(1), horizon=1)
    theta_old = torch.tensor([[0.3, -0.1, 0.2]], dtype=torch.float64)
    for shift in (torch.tensor([[5.0, -3.0, 0.0]]), torch.tensor([[-8.0, 1.0, 9.0]])):
        theta = theta_old + shift.double()
        assert M.surrogate(theta, theta_old).item() == pytest.approx(M.exact_return(theta).item(), abs=1e-12)


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES[:3])
def test_mean_kl_is_the_average_over_the_old_policys_trajectories(seed, S, A, H, gamma):
    M, theta_old, theta = _random(seed, S, A, H, gamma)
    prob_old, _ = M.enumerate_trajectories(theta_old)
    s, _ = _trajectories(M)
    pi_old, pi = M.policy(theta_old), M.policy(theta)
    kl_s = (pi_old * (pi_old.log() - pi.log())).sum(-1)                               # [S], by the definition
    assert torch.allclose(M.kl_per_state(theta_old, theta), kl_s, rtol=0, atol=1e-12)
    brute = (prob_old * kl_s[s].mean(-1)).sum()
    assert M.mean_kl(theta_old, theta).item() == pytest.approx(brute.item(), abs=1e-12)
    assert M.mean_kl(theta_old, theta_old).item() == 0.0


def test_kl_is_finite_on_extreme_logits():
    M, theta_old, _ = _random(0)
    theta = theta_old.clone()
    theta[0] = torch.tensor([800.0, -800.0], dtype=torch.float64)
    kl = M.kl_per_state(theta_old, theta)
    assert torch.isfinite(kl).all() and kl[0] > 100 and torch.isfinite(M.surrogate(theta, theta_old))


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES)
def test_fisher_is_the_hessian_of_the_mean_kl(seed, S, A, H, gamma):
    M, theta_old, _ = _random(seed, S, A, H, gamma)
    hess = torch.autograd.functional.hessian(lambda x: M.mean_kl(theta_old, x.reshape(S, A)), theta_old.flatten().clone())
    assert torch.allclose(M.fisher(theta_old), hess, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES)
def test_natural_gradient_closed_form(seed, S, A, H, gamma):
    # For the tabular softmax, F^+ g in state s is H / w_s times the centred q_s(a) = sum_t gamma^t d_t(s) A_t(s, a),
    # w_s = sum_t d_t(s): the average advantage of a in s over the old policy's visits.
    M, theta, _ = _random(seed, S, A, H, gamma)
    d = M.state_distributions(theta)
    discount = M.gamma ** torch.arange(H, dtype=torch.float64)
    q = torch.einsum("t,ts,tsa->sa", discount, d, _advantages(M, theta))
    closed = H / d.sum(0)[:, None] * (q - q.mean(-1, keepdim=True))
    assert torch.allclose(M.natural_gradient(theta), closed, rtol=0, atol=1e-10)


def _line(M, theta_old, steps):
    s = M.natural_gradient(theta_old)
    u = s / s.norm()
    J = torch.stack([M.exact_return(theta_old + t * u) for t in steps])
    L = torch.stack([M.surrogate(theta_old + t * u, theta_old) for t in steps])
    bound = torch.stack([M.surrogate_gap_bound(theta_old + t * u, theta_old) for t in steps])
    return J, L, bound


@pytest.mark.parametrize("seed,S,A,H,gamma", CASES)
def test_gap_grows_with_the_step_and_stays_under_trpos_bound(seed, S, A, H, gamma):
    M, theta_old, _ = _random(seed, S, A, H, gamma)
    steps = torch.linspace(0, 4, 41, dtype=torch.float64)
    J, L, bound = _line(M, theta_old, steps)
    gap = (J - L).abs()
    assert gap[0] < 1e-12 and gap[-1] > 100 * gap[1]                     # second order near 0, then large
    assert torch.all(gap[1:] >= gap[:-1] - 1e-12)                          # grows with the step on this line
    assert torch.all(gap <= bound + 1e-12)                                 # Theorem 1, finite-horizon form


def test_gap_bound_holds_in_random_directions():
    M, theta_old, _ = _random(1, 4, 3, 5, 0.95)
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        theta = theta_old + 3 * torch.randn(4, 3, generator=g, dtype=torch.float64)
        gap = (M.exact_return(theta) - M.surrogate(theta, theta_old)).abs()
        assert gap <= M.surrogate_gap_bound(theta, theta_old) + 1e-12


def test_cash_in_trap_the_surrogates_best_step_lowers_J():
    M = mdp.TabularMDP.cash_in_trap()
    steps = torch.linspace(0, 8, 81, dtype=torch.float64)
    J, L, _ = _line(M, TRAP_OLD, steps)
    J_old = J[0]
    i_J, i_L = int(J.argmax()), int(L.argmax())
    assert 0 < i_J < i_L and J[i_J] > J_old + 0.1      # J has a best step inside the range ...
    assert L[i_L] > J_old + 1 and J[i_L] < J_old - 1   # ... L's best step is further and lowers J
    A_cash = _advantages(M, TRAP_OLD)[:, 1, 1]          # A_t(B, cash in) of the old policy
    assert torch.all(A_cash[:3] < 0) and torch.all(A_cash[3:] > 0)    # pays only at the last two steps
    assert M.natural_gradient(TRAP_OLD)[1, 1] > 0      # yet the old visits (late) make the step favour it


def test_surrogate_kl_and_fisher_bad_input():
    M, theta, _ = _random(0)
    with pytest.raises(ValueError, match="theta must have shape"):
        M.surrogate(theta, torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        M.mean_kl([[0.0, 0.0]] * 3, theta)
    with pytest.raises(ValueError, match="finite"):
        M.surrogate(theta, torch.full((3, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="horizon"):
        mdp.TabularMDP.cash_in_trap(horizon=0)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        M.natural_gradient([[0.0, 0.0]] * 3)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        M.surrogate_gap_bound(theta, [[0.0, 0.0]] * 3)


def test_reinforce_climbs_the_exact_return_and_is_seeded():
    M = mdp.TabularMDP.random(n_states=3, n_actions=2, horizon=4, gamma=0.9, seed=0)
    theta = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = theta.clone()
    th, J = M.reinforce(theta, steps=40, n=64, lr=0.5, seed=0)
    assert torch.equal(theta, before) and J.shape == (41,)                  # the caller's theta untouched
    assert J[0] == M.exact_return(theta) and J[-1] == M.exact_return(th)
    assert J[-1] > J[0] + 0.5                                               # it learns
    th2, J2 = M.reinforce(theta, steps=40, n=64, lr=0.5, seed=0)
    assert torch.equal(J, J2) and torch.equal(th, th2)
    # one step is theta + lr * (the mean of the causal estimator's samples), as the docstring says
    g = torch.Generator().manual_seed(3)
    traj = M.sample_trajectories(theta, 8, g)
    step = M.score_function_samples(theta, traj, M.discounts() * mdp.reward_to_go(traj.rewards, M.gamma)).mean(0)
    one, _ = M.reinforce(theta, steps=1, n=8, lr=0.1, seed=3)
    assert torch.allclose(one, theta + 0.1 * step, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="lr must be > 0, got 0.0"):
        M.reinforce(theta, lr=0)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        M.reinforce([[0.0, 0.0]] * 3)
