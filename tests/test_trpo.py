import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from rlnotes import bandits, trpo
from rlnotes.kl import mean_kl
from rlnotes.nets import CategoricalPolicy


def spd_matrix(n, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


# ---------------------------------------------------------------- conjugate_gradient

def test_cg_matches_numpy_solve():
    A = spd_matrix(6)
    b = np.random.default_rng(1).standard_normal(6)
    x = trpo.conjugate_gradient(lambda v: A @ v, b, iters=6)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)


def test_cg_on_torch_vectors():
    A = torch.tensor(spd_matrix(5, seed=2))
    b = torch.arange(1.0, 6.0, dtype=torch.float64)
    x = trpo.conjugate_gradient(lambda v: A @ v, b, iters=5)
    assert torch.is_tensor(x)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A.numpy(), b.numpy()), rtol=1e-8)


def test_cg_exact_in_n_steps_and_records_residuals():
    A = spd_matrix(4, seed=3)
    b = np.ones(4)
    residuals = []
    x = trpo.conjugate_gradient(lambda v: A @ v, b, iters=50, tol=1e-20, residuals=residuals)
    assert residuals[0] == pytest.approx(4.0)          # r_0 = b, |b|^2 = 4
    assert len(residuals) <= 1 + 4 + 1                  # exact (up to rounding) after n = 4 steps
    np.testing.assert_allclose(A @ x, b, atol=1e-8)


def test_cg_stops_early_at_tol():
    A = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    residuals, calls = [], []
    trpo.conjugate_gradient(lambda v: calls.append(1) or A @ v, np.ones(5), iters=100, tol=1e-3,
                            residuals=residuals)
    assert residuals[-1] <= 1e-3 and all(r > 1e-3 for r in residuals[:-1])
    assert len(calls) == len(residuals) - 1


def test_cg_with_few_iterations_is_partial():
    A = spd_matrix(8, seed=4)
    b = np.ones(8)
    residuals = []
    trpo.conjugate_gradient(lambda v: A @ v, b, iters=2, residuals=residuals)
    assert len(residuals) == 3 and residuals[-1] < residuals[0]


def test_cg_zero_rhs_gives_zero_without_products():
    x = trpo.conjugate_gradient(lambda v: pytest.fail("no product needed"), np.zeros(3))
    np.testing.assert_array_equal(x, np.zeros(3))


def test_cg_errors():
    A = np.eye(2)
    with pytest.raises(ValueError, match="iters"):
        trpo.conjugate_gradient(lambda v: A @ v, np.ones(2), iters=0)
    with pytest.raises(ValueError, match="tol"):
        trpo.conjugate_gradient(lambda v: A @ v, np.ones(2), tol=-1.0)
    with pytest.raises(ValueError, match="b must be finite"):
        trpo.conjugate_gradient(lambda v: A @ v, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="Avp"):
        trpo.conjugate_gradient(lambda v: v * np.inf, np.ones(2))
    with pytest.raises(ValueError, match="positive definite"):
        trpo.conjugate_gradient(lambda v: -v, np.ones(2))


def test_cg_on_singular_softmax_fisher_finds_pseudo_inverse_solution():
    # F = diag(pi) - pi pi^T has F 1 = 0; g is orthogonal to 1, so CG from 0 stays orthogonal to 1
    # and converges to the minimum-norm solution pinv(F) g.
    theta = np.array([0.3, -0.2, 0.8, 0.0])
    bandit = bandits.SoftmaxBandit(means=[1.0, 0.0, 0.5, 0.2])
    F, g = bandits.fisher(theta), bandit.exact_gradient(theta)
    x = trpo.conjugate_gradient(lambda v: F @ v, g, iters=10, tol=1e-24)
    np.testing.assert_allclose(x, np.linalg.pinv(F) @ g, atol=1e-8)


# ---------------------------------------------------------------- surrogate and mean KL

def test_surrogate_is_one_times_advantage_mean_at_theta_old():
    logp = torch.log(torch.tensor([0.2, 0.5, 0.9]))
    adv = torch.tensor([1.0, -2.0, 4.0])
    assert trpo.surrogate(logp, logp, adv).item() == pytest.approx(1.0)


def test_surrogate_value_and_gradient():
    logp_old = torch.log(torch.tensor([0.5, 0.25]))
    logp = torch.log(torch.tensor([0.25, 0.5])).requires_grad_()
    adv = torch.tensor([2.0, 1.0])
    L = trpo.surrogate(logp, logp_old, adv)
    assert L.item() == pytest.approx((0.5 * 2.0 + 2.0 * 1.0) / 2)
    L.backward()                                   # dL/dlogp_t = ratio_t * A_t / n
    np.testing.assert_allclose(logp.grad.numpy(), [0.5 * 2.0 / 2, 2.0 * 1.0 / 2])


def test_surrogate_gradient_at_theta_old_is_policy_gradient():
    torch.manual_seed(0)
    policy = CategoricalPolicy(3, 2, hidden=8)
    obs, actions, adv = torch.randn(20, 3), torch.randint(0, 2, (20,)), torch.randn(20)
    logp = policy.logp(obs, actions)
    g_surr = torch.autograd.grad(trpo.surrogate(logp, logp.detach(), adv), list(policy.parameters()))
    g_pg = torch.autograd.grad((policy.logp(obs, actions) * adv).mean(), list(policy.parameters()))
    for a, b in zip(g_surr, g_pg):
        torch.testing.assert_close(a, b)


def test_surrogate_shape_check():
    with pytest.raises(ValueError, match="shapes must match"):
        trpo.surrogate(torch.zeros(3), torch.zeros(3), torch.zeros(4))


def test_surrogate_refuses_nan_inf_and_empty_input_by_name():  # issue 27
    ok = torch.zeros(3)
    for name, args in (("logp", (torch.tensor([0.0, math.nan, 0.0]), ok, ok)),
                       ("logp_old", (ok, torch.tensor([0.0, -math.inf, 0.0]), ok)),
                       ("advantages", (ok, ok, torch.tensor([math.inf, 0.0, 0.0])))):
        with pytest.raises(ValueError, match=f"^{name} must be finite"):
            trpo.surrogate(*args)
    with pytest.raises(ValueError, match="at least one sample"):
        trpo.surrogate(torch.zeros(0), torch.zeros(0), torch.zeros(0))


def test_mean_kl_matches_exact_bandit_kl():
    theta_old, theta = np.array([0.1, 0.5, -0.3]), np.array([0.4, -0.2, 0.0])
    old = Categorical(logits=torch.tensor(np.stack([theta_old, theta_old])))
    new = Categorical(logits=torch.tensor(np.stack([theta, theta])))
    assert mean_kl(old.logits, new.logits).item() == pytest.approx(bandits.kl(theta_old, theta))


# ---------------------------------------------------------------- Fisher-vector product

def explicit_fisher(policy, obs):
    """F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T, by enumeration."""
    params = list(policy.parameters())
    n = sum(p.numel() for p in params)
    F = torch.zeros(n, n, dtype=torch.float64)
    for s in obs:
        dist = policy(s[None])
        for a in range(dist.probs.shape[-1]):
            grad = torch.autograd.grad(dist.log_prob(torch.tensor([a]))[0], params, retain_graph=True)
            grad = torch.cat([t.reshape(-1) for t in grad]).double()
            F += dist.probs[0, a].item() * torch.outer(grad, grad)
    return F / len(obs)


def test_fisher_vector_product_matches_explicit_fisher():
    torch.manual_seed(0)
    policy = CategoricalPolicy(3, 3, hidden=4)
    obs = torch.randn(5, 3)
    F = explicit_fisher(policy, obs)
    Fvp = trpo.fisher_vector_product(policy, obs, damping=0.1)
    for _ in range(3):
        v = torch.randn(F.shape[0])
        torch.testing.assert_close(Fvp(v).double(), F @ v.double() + 0.1 * v.double(), rtol=1e-4, atol=1e-6)


def test_fisher_vector_product_is_kl_curvature():
    # KL(theta_old + t v) ~= t^2 / 2 * v^T F v for small t.
    torch.manual_seed(1)
    policy = CategoricalPolicy(4, 2, hidden=8)
    obs = torch.randn(32, 4)
    v = torch.randn(sum(p.numel() for p in policy.parameters()))
    vFv = (v @ trpo.fisher_vector_product(policy, obs, damping=0.0)(v)).item()
    params = list(policy.parameters())
    with torch.no_grad():
        old = policy(obs)
        theta = parameters_to_vector(params)
        t = 1e-2
        vector_to_parameters(theta + t * v, params)
        kl = mean_kl(old.logits, policy(obs).logits).item()
    assert kl == pytest.approx(0.5 * t ** 2 * vFv, rel=0.05)


def test_fisher_vector_product_errors():
    policy = CategoricalPolicy(2, 2)
    with pytest.raises(ValueError, match="damping"):
        trpo.fisher_vector_product(policy, torch.zeros(3, 2), damping=-1.0)
    with pytest.raises(ValueError, match="obs must be finite"):
        trpo.fisher_vector_product(policy, torch.full((3, 2), float("nan")))


# ---------------------------------------------------------------- line search

def test_line_search_accepts_full_step_inside_region():
    result = trpo.line_search(lambda s: (1.0, 0.5 * float(s @ s)), np.array([0.1, 0.0]), delta=0.01)
    assert result.accepted and result.backtracks == 0
    np.testing.assert_allclose(result.step, [0.1, 0.0])
    assert result.kl == pytest.approx(0.005) and result.improvement == 1.0


def test_line_search_backtracks_until_kl_fits():
    # KL = |s|^2 / 2 with |full step| = 1: need shrink^i <= sqrt(2 * 0.01) = 0.141 -> i = 3 at shrink 0.5
    result = trpo.line_search(lambda s: (float(s.sum()), 0.5 * float(s @ s)), np.array([1.0, 0.0]),
                              delta=0.01, shrink=0.5)
    assert result.accepted and result.backtracks == 3
    assert result.kl <= 0.01
    np.testing.assert_allclose(result.step, [0.125, 0.0])
    np.testing.assert_allclose([kl for _, kl in result.trials], [0.5, 0.125, 0.03125, 0.0078125])


def test_line_search_needs_improvement():
    # The surrogate only improves for steps shorter than 0.3 (a concave bump), KL is tiny.
    def evaluate(s):
        x = float(s[0])
        return x * (0.3 - x), 0.0
    result = trpo.line_search(evaluate, np.array([1.0]), delta=0.01, shrink=0.5)
    assert result.accepted and result.backtracks == 2 and result.step[0] == 0.25


def test_line_search_rejects_and_returns_zero_step():
    result = trpo.line_search(lambda s: (-1.0, 0.0), np.array([1.0, 2.0]), delta=0.01, max_backtracks=5)
    assert not result.accepted and result.backtracks == 5 and len(result.trials) == 5
    np.testing.assert_array_equal(result.step, [0.0, 0.0])


def test_line_search_skips_non_finite_trials():
    def evaluate(s):
        return (float("nan"), 0.0) if s[0] > 0.6 else (1.0, 0.0)
    result = trpo.line_search(evaluate, np.array([1.0]), delta=0.01, shrink=0.5)
    assert result.accepted and result.backtracks == 1


def test_line_search_errors():
    ok = lambda s: (1.0, 0.0)  # noqa: E731
    with pytest.raises(ValueError, match="delta"):
        trpo.line_search(ok, np.ones(2), delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        trpo.line_search(ok, np.ones(2), delta=-0.1)
    with pytest.raises(ValueError, match="max_backtracks"):
        trpo.line_search(ok, np.ones(2), delta=0.01, max_backtracks=0)
    with pytest.raises(ValueError, match="shrink"):
        trpo.line_search(ok, np.ones(2), delta=0.01, shrink=1.0)
    with pytest.raises(ValueError, match="full_step must be finite"):
        trpo.line_search(ok, np.array([np.inf, 0.0]), delta=0.01)


# ---------------------------------------------------------------- trpo_step

def batch(seed=0, n=64):
    torch.manual_seed(seed)
    policy = CategoricalPolicy(4, 3, hidden=16)
    obs = torch.randn(n, 4)
    with torch.no_grad():
        actions = policy(obs).sample()
    return policy, obs, actions, torch.randn(n)


def test_trpo_step_respects_trust_region_and_improves_surrogate():
    for delta in [0.001, 0.01, 0.1]:
        policy, obs, actions, adv = batch()
        with torch.no_grad():
            old = policy(obs)
        info = trpo.trpo_step(policy, obs, actions, adv, delta)
        with torch.no_grad():
            new = policy(obs)
            measured = mean_kl(old.logits, new.logits).item()
            gain = trpo.surrogate(new.log_prob(actions), old.log_prob(actions), adv).item() - adv.mean().item()
        assert set(info) == {"kl/exact_per_state", "kl/exact_per_state_full_step", "improvement", "backtracks",
                             "accepted", "cg_iters", "cg_residual", "step_size"}
        assert info["accepted"] == 1.0
        assert measured == pytest.approx(info["kl/exact_per_state"], rel=1e-4, abs=1e-9)
        assert 0 < measured <= delta
        assert gain == pytest.approx(info["improvement"], rel=1e-3, abs=1e-7) and gain > 0
        assert info["cg_iters"] <= 10 and info["step_size"] > 0
        if info["backtracks"] == 0:
            assert info["kl/exact_per_state_full_step"] == info["kl/exact_per_state"]


def test_trpo_step_full_step_reaches_near_delta():
    # With little damping the quadratic model is good for a small delta: the KL lands close to delta.
    policy, obs, actions, adv = batch(seed=3)
    info = trpo.trpo_step(policy, obs, actions, adv, 1e-3, damping=1e-3, cg_iters=50)
    assert info["backtracks"] == 0
    assert 0.5e-3 < info["kl/exact_per_state"] <= 1e-3


def test_trpo_step_rejected_leaves_policy_unchanged():
    policy, obs, actions, adv = batch(seed=1)
    before = parameters_to_vector(policy.parameters()).clone()
    # With all advantages zero no step improves the surrogate, so every trial fails.
    info = trpo.trpo_step(policy, obs, actions, torch.zeros_like(adv), 0.01)
    assert info["accepted"] == 0.0 and info["kl/exact_per_state"] == 0.0 and info["backtracks"] == 10
    torch.testing.assert_close(parameters_to_vector(policy.parameters()), before, rtol=0, atol=0)


def test_trpo_step_pass_counts():
    policy, obs, actions, adv = batch(seed=2)
    with trpo.count_passes(policy) as passes:
        info = trpo.trpo_step(policy, obs, actions, adv, 0.01, cg_iters=7)
    trials = info["backtracks"] + 1 if info["accepted"] else info["backtracks"]
    assert passes == {"forward": 2 + trials, "backward": 3 + info["cg_iters"]}
    assert info["cg_iters"] == 7


def test_count_passes_on_plain_gradient_step():
    policy, obs, actions, adv = batch()
    with trpo.count_passes(policy) as passes:
        (policy.logp(obs, actions) * adv).mean().backward()
    assert passes == {"forward": 1, "backward": 1}
    with torch.no_grad():
        policy(obs)
    assert passes == {"forward": 1, "backward": 1}       # hooks removed after the block


def test_trpo_step_errors():
    policy, obs, actions, adv = batch()
    with pytest.raises(ValueError, match="delta"):
        trpo.trpo_step(policy, obs, actions, adv, 0.0)
    with pytest.raises(ValueError, match="advantages must be finite"):
        trpo.trpo_step(policy, obs, actions, adv * float("nan"), 0.01)
    with pytest.raises(ValueError, match="obs must be finite"):
        trpo.trpo_step(policy, obs * float("inf"), actions, adv, 0.01)
    with pytest.raises(ValueError, match="cg_iters"):
        trpo.trpo_step(policy, obs, actions, adv, 0.01, cg_iters=0)


# ---------------------------------------------------------------- train

def test_train_logs_per_update_and_respects_kl():
    out = trpo.train("CartPole-v1", total_steps=2048, seed=0, num_envs=4, num_steps=128)
    h = out.history
    n = len(h.update_array("env_steps"))
    assert n == 4
    for name in ["env_steps", "kl/exact_per_state", "kl/exact_per_state_full_step", "improvement", "backtracks",
                 "accepted", "cg_iters", "cg_residual", "step_size", "entropy", "loss/value", "seconds"]:
        assert len(h.update_array(name)) == n, name
    accepted = h.update_array("accepted") == 1
    assert np.all(h.update_array("kl/exact_per_state")[accepted] <= 0.01)
    assert np.all(h.update_array("kl/exact_per_state")[~accepted] == 0)
    assert list(h.update_array("env_steps")) == [512, 1024, 1536, 2048]
    assert len(h.episode_returns) > 0


def test_train_is_deterministic():
    a = trpo.train("CartPole-v1", total_steps=1024, seed=3, num_envs=4, num_steps=64).history
    b = trpo.train("CartPole-v1", total_steps=1024, seed=3, num_envs=4, num_steps=64).history
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)
    np.testing.assert_array_equal(a.update_array("kl/exact_per_state"), b.update_array("kl/exact_per_state"))


def test_train_errors():
    with pytest.raises(ValueError, match="delta"):
        trpo.train("CartPole-v1", total_steps=100, seed=0, delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        trpo.train("CartPole-v1", total_steps=100, seed=0, delta=float("nan"))
    with pytest.raises(ValueError, match="cg_iters"):
        trpo.train("CartPole-v1", total_steps=100, seed=0, cg_iters=0)
    with pytest.raises(ValueError, match="shrink"):
        trpo.train("CartPole-v1", total_steps=100, seed=0, shrink=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        trpo.train("CartPole-v1", total_steps=0, seed=0)
    with pytest.raises(ValueError, match="Discrete"):
        trpo.train("Pendulum-v1", total_steps=100, seed=0)


def test_train_learns_cartpole():
    h = trpo.train("CartPole-v1", total_steps=30_000, seed=0).history
    assert h.final_mean_return() > 150
    assert math.isfinite(h.final_mean_return())


# --- issue 27, round two: arguments named at entry, the caller's global settings -----------------------

def test_cg_names_avp_that_is_not_a_function_or_returns_the_wrong_shape():
    b = np.array([1.0, 2.0])
    with pytest.raises(TypeError, match="Avp must be a function v -> A v, got NoneType None"):
        trpo.conjugate_gradient(None, b)
    with pytest.raises(ValueError, match=r"Avp must return a vector of b's shape \(2,\), got shape \(3,\)"):
        trpo.conjugate_gradient(lambda v: np.ones(3), b)


def test_line_search_names_evaluate_that_returns_one_number():
    with pytest.raises(TypeError, match=r"evaluate must return two numbers \(improvement, kl\), got 1.0"):
        trpo.line_search(lambda s: 1.0, np.ones(2), 0.01)
    with pytest.raises(TypeError, match="evaluate must be a function step -> "):
        trpo.line_search(None, np.ones(2), 0.01)


def test_fisher_vector_product_names_obs_of_the_wrong_width_and_v_of_the_wrong_length():
    policy = CategoricalPolicy(4, 2, hidden=8)
    with pytest.raises(ValueError, match=r"obs must be \[batch, 4 \(the network's input width\)\], got shape \(6, 3\)"):
        trpo.fisher_vector_product(policy, torch.randn(6, 3))
    Fvp = trpo.fisher_vector_product(policy, torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"v must be a vector of the policy's 130 trainable parameters, got shape \(3"):
        Fvp(torch.ones(3))


def test_trpo_step_names_bad_actions_and_a_frozen_policy():
    policy, obs, actions, adv = batch()  # 3 actions
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\) \(the policy's 3 actions\), got 5"):
        trpo.trpo_step(policy, obs, actions.clone().fill_(5), adv)
    with pytest.raises(TypeError, match="actions must be a tensor of an integer dtype, got dtype torch.float32"):
        trpo.trpo_step(policy, obs, actions.float() + 0.5, adv)
    with pytest.raises(ValueError, match=r"actions must be \[batch\] = \[4\], one per row of obs, got shape \(64,\)"):
        trpo.trpo_step(policy, obs[:4], actions, adv)
    with pytest.raises(ValueError, match="policy has no parameter with requires_grad=True"):
        trpo.trpo_step(policy.requires_grad_(False), obs, actions, adv)
