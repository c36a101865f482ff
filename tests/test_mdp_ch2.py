"""Chapter 2 on the tabular MDP: TRPO's surrogate L (Schulman et al. 2015, eq. 3), the mean KL, the
Fisher matrix and the natural gradient, each against a second, independent computation."""

import pytest
import torch

from rlnotes import mdp


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


def test_bad_input():
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
