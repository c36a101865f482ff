"""rlnotes.dpo_closed_form: the optimal policy and its partition function, the RLHF objective, and DPO
on a one-token model (``fit_categorical``), where pi* is exact."""

import numpy as np
import pytest
import torch

from rlnotes import dpo_closed_form
from rlnotes.dpo_closed_form import fit_categorical, log_optimal_policy, log_partition, optimal_policy


def _problem(seed=0, prompts=4, responses=7):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(responses), size=prompts)
    r = rng.normal(size=(prompts, responses))
    return ref, r


# ----- optimal_policy / log_partition ---------------------------------------------------------

def test_optimal_policy_matches_direct_computation():
    ref, r = _problem()
    beta = 0.7
    unnorm = ref * np.exp(r / beta)
    np.testing.assert_allclose(optimal_policy(ref, r, beta), unnorm / unnorm.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r, beta), np.log(unnorm.sum(-1)), rtol=1e-12)
    np.testing.assert_allclose(log_optimal_policy(ref, r, beta), np.log(unnorm / unnorm.sum(-1, keepdims=True)),
                               rtol=1e-10)


def test_optimal_policy_is_the_maximiser():
    ref, r = _problem(1, prompts=3, responses=5)
    beta = 0.5
    pi_star = optimal_policy(ref, r, beta)

    def objective(pi):
        return (pi * r).sum(-1) - beta * (pi * np.log(pi / ref)).sum(-1)

    rng = np.random.default_rng(2)
    for _ in range(200):
        pi = rng.dirichlet(np.ones(5), size=3)
        gap = objective(pi_star) - objective(pi)
        kl = (pi * np.log(pi / pi_star)).sum(-1)
        np.testing.assert_allclose(gap, beta * kl, atol=1e-10)   # gap = beta KL(pi || pi*) >= 0
        assert (gap >= 0).all()


def test_optimal_policy_large_reward_over_beta_is_finite():
    ref, r = _problem(3)
    r = r * 1e4
    pi = optimal_policy(ref, r, 1e-3)          # r / beta up to ~1e7: exp would overflow
    log_z = log_partition(ref, r, 1e-3)
    assert np.isfinite(pi).all() and np.isfinite(log_z).all()
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-12)
    # all mass on the best response; log Z ~ max (log pi_ref + r / beta)
    assert (pi.argmax(-1) == r.argmax(-1)).all()
    np.testing.assert_allclose(log_z, (np.log(ref) + r / 1e-3).max(-1), rtol=1e-9)


def test_optimal_policy_beta_limits():
    ref, r = _problem(4)
    np.testing.assert_allclose(optimal_policy(ref, r, 1e6), ref, atol=1e-5)   # beta -> inf: pi_ref
    # shifting r by a per-prompt constant changes log Z by c / beta, not pi*
    c = np.arange(4.0)[:, None]
    np.testing.assert_allclose(optimal_policy(ref, r + c, 0.3), optimal_policy(ref, r, 0.3), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r + c, 0.3), log_partition(ref, r, 0.3) + c[:, 0] / 0.3)


def test_optimal_policy_torch_and_zero_ref_probs():
    ref = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0, 100.0]], dtype=torch.float64)
    pi = optimal_policy(ref, r, 1.0)
    assert torch.is_tensor(pi) and pi[0, 2] == 0     # no mass where pi_ref has none
    torch.testing.assert_close(pi.sum(-1), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(log_partition(ref, r, 1.0), torch.log(0.5 * torch.exp(r[:, 0]) + 0.5 * torch.exp(r[:, 1])))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_optimal_policy_bad_beta(beta):
    ref, r = _problem()
    with pytest.raises(ValueError, match="beta"):
        optimal_policy(ref, r, beta)
    with pytest.raises(ValueError, match="beta"):
        log_partition(ref, r, beta)


def test_optimal_policy_bad_inputs():
    ref, r = _problem()
    with pytest.raises(ValueError, match="shapes must match"):
        optimal_policy(ref, r[:, :3], 1.0)
    with pytest.raises(ValueError, match="ref_probs must sum to 1"):
        optimal_policy(ref * 2, r, 1.0)
    bad = ref.copy()
    bad[0, :2] = [-0.1, bad[0, 0] + bad[0, 1] + 0.1]
    with pytest.raises(ValueError, match="ref_probs must be >= 0"):
        optimal_policy(bad, r, 1.0)
    r_nan = r.copy()
    r_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="rewards must be finite"):
        log_partition(ref, r_nan, 1.0)


@pytest.mark.parametrize("pi, match", [([0.9, 0.9], r"policy_probs must sum to 1 .* got sums from 1.8 to 1.8"),
                                       ([float("nan"), 1.0], "policy_probs must be finite"),
                                       ([[0.5, 0.5], [0.2, 0.2]], r"policy_probs must sum to 1 .* from 0.4 to 1")])
def test_rlhf_objective_refuses_a_policy_that_is_not_a_distribution(pi, match):
    with pytest.raises(ValueError, match=match):
        dpo_closed_form.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    # the neighbours: a float32 softmax over many responses, a list of floats
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref = np.full(50, 1 / 50)
    assert torch.isfinite(dpo_closed_form.rlhf_objective(torch.softmax(logits, -1), ref, np.zeros(50), 0.5)).all()
    assert np.isclose(dpo_closed_form.rlhf_objective([0.3, 0.7], [0.5, 0.5], [0.0, 1.0], 1.0),
                      0.7 - (0.3 * np.log(0.6) + 0.7 * np.log(1.4)))


@pytest.mark.parametrize("ref_probs, winners, match", [
    ([0.5, float("nan")], [0], "ref_probs must be a distribution"),
    ([0.5, 0.5], [True], "winners and losers must be non-empty 1-D integer arrays"),
])
def test_fit_categorical_refuses_nan_probabilities_and_bool_tokens(ref_probs, winners, match):
    with pytest.raises(ValueError, match=match):
        dpo_closed_form.fit_categorical(ref_probs, winners, [1], 1.0, epochs=1, batch_size=1)


# ----- fit_categorical ------------------------------------------------------------------------------

def _labelled_pairs(seed=0, K=5, N=20_000):
    g = np.random.default_rng(seed)
    ref, r = g.dirichlet(2 * np.ones(K)), g.standard_normal(K)
    y1, y2 = g.choice(K, N, p=ref), g.choice(K, N, p=ref)
    first = g.random(N) < 1 / (1 + np.exp(-(r[y1] - r[y2])))
    return ref, r, np.where(first, y1, y2), np.where(first, y2, y1)


def test_fit_categorical_recovers_the_optimal_policy():
    ref, r, y_w, y_l = _labelled_pairs()
    for beta in (0.5, 2.0):
        probs = fit_categorical(ref, y_w, y_l, beta, epochs=5, batch_size=500, lr=0.05)
        assert probs.shape == (5 * 40, 5) and np.allclose(probs.sum(1), 1)
        target = optimal_policy(ref, r, beta)
        tv = 0.5 * np.abs(probs - target).sum(1)
        assert tv[-1] < 0.03 and tv[-1] < 0.5 * (0.5 * np.abs(ref - target).sum())


def test_fit_categorical_is_seeded_and_starts_at_the_reference():
    ref, _, y_w, y_l = _labelled_pairs(1, N=2000)
    a = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=3)
    b = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=3)
    c = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # no preference at all (each pair once each way): the first step's gradient is 0, pi stays pi_ref
    same = fit_categorical(ref, np.array([0, 1]), np.array([1, 0]), 1.0, epochs=1, batch_size=2)
    assert np.allclose(same[0], ref, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ref_probs=[0.5, 0.6]), "ref_probs"),
    (dict(ref_probs=[1.0]), "ref_probs"),
    (dict(winners=[0, 1], losers=[1]), "winners and losers"),
    (dict(winners=[0.0], losers=[1.0]), "winners and losers"),
    (dict(winners=[0], losers=[3]), r"\[0, 1\]"),
    (dict(beta=0.0), "beta"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(seed=-1), "seed"),
])
def test_fit_categorical_rejects_bad_input(kwargs, match):
    args = dict(ref_probs=[0.5, 0.5], winners=[0], losers=[1], beta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_categorical(args.pop("ref_probs"), args.pop("winners"), args.pop("losers"), args.pop("beta"), **args)


# ----- rlhf_objective -------------------------------------------------------------------------------

def test_rlhf_objective_is_the_formula_and_peaks_at_beta_log_z():
    g = np.random.default_rng(0)
    ref, r = g.dirichlet(np.ones(6), size=3), g.normal(size=(3, 6))
    beta = 0.7
    pis = g.dirichlet(np.ones(6), size=(50, 3))
    direct = (pis * r).sum(-1) - beta * (pis * np.log(pis / ref)).sum(-1)
    np.testing.assert_allclose(dpo_closed_form.rlhf_objective(pis, ref, r, beta), direct, rtol=1e-12, atol=1e-12)
    star = optimal_policy(ref, r, beta)
    at_star = dpo_closed_form.rlhf_objective(star, ref, r, beta)
    np.testing.assert_allclose(at_star, beta * dpo_closed_form.log_partition(ref, r, beta), rtol=1e-12)   # the maximum, beta log Z
    assert (at_star[None] > dpo_closed_form.rlhf_objective(pis, ref, r, beta)).all()


def test_rlhf_objective_zero_probabilities_and_torch():
    ref, r = np.array([0.5, 0.5]), np.array([1.0, -1.0])
    # all mass on the first response: E[r] = 1, KL = log 2
    assert np.isclose(dpo_closed_form.rlhf_objective([1.0, 0.0], ref, r, 0.5), 1.0 - 0.5 * np.log(2))
    pi = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    val = dpo_closed_form.rlhf_objective(pi, ref, r, 0.5)
    (grad,) = torch.autograd.grad(val, pi)
    assert torch.is_tensor(val) and torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.numpy(), r - 0.5 * (np.log(pi.detach().numpy() / ref) + 1), rtol=1e-12)


@pytest.mark.parametrize("pi, match", [([0.5, 0.5, 0.0], "policy_probs must end"), ([1.5, -0.5], "policy_probs must be >= 0")])
def test_rlhf_objective_rejects_bad_input(pi, match):
    with pytest.raises(ValueError, match=match):
        dpo_closed_form.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_closed_form.rlhf_objective([0.5, 0.5], [0.5, 0.5], [0.0, 1.0], 0.0)


def test_rlhf_objective_gradient_finite_where_pi_is_zero():
    pi = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    val = dpo_closed_form.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    assert torch.isclose(val, torch.tensor(1.0 - np.log(2), dtype=torch.float64))
    (grad,) = torch.autograd.grad(val, pi)
    assert not torch.isnan(grad).any()
    # a response the reference never writes: infinite KL if the policy writes it, nothing if it does not
    assert np.isinf(dpo_closed_form.rlhf_objective([0.5, 0.5], [1.0, 0.0], [0.0, 0.0], 1.0))
    assert dpo_closed_form.rlhf_objective([1.0, 0.0], [1.0, 0.0], [0.0, 0.0], 1.0) == 0.0


def test_optimal_policy_refuses_a_beta_so_small_that_rewards_over_beta_overflow():
    with pytest.raises(ValueError, match=r"beta must be large enough that rewards / beta is finite, got beta=1e-309"):
        dpo_closed_form.optimal_policy([.5, .3, .2], [1, 0, -1], 1e-309)
    with pytest.raises(ValueError, match="beta must be large enough"):
        dpo_closed_form.log_optimal_policy(torch.tensor([.5, .3, .2], dtype=torch.float64),
                               torch.tensor([1., 0., -1.], dtype=torch.float64), 1e-309)
    with pytest.raises(ValueError, match="beta must be large enough"):
        dpo_closed_form.log_partition([.5, .3, .2], [1, 0, -1], 1e-309)


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_fit_categorical_refuses_epochs_above_max_epochs():
    with pytest.raises(ValueError, match=r"epochs must be <= MAX_EPOCHS \(1000\), got 1000000000"):
        fit_categorical([0.5, 0.5], [0], [1], 0.5, epochs=10**9)


def test_log_partition_names_ref_probs_that_are_not_numbers():
    with pytest.raises(TypeError, match=r"ref_probs must be an array of real numbers, got str 'abc'"):
        log_partition("abc", [1.0, 0.0], 0.1)


def test_optimal_policy_names_rewards_that_are_not_numbers():
    with pytest.raises(TypeError, match=r"rewards must be an array of real numbers, got list \['a', 'b'\]"):
        optimal_policy([0.5, 0.5], ["a", "b"], 0.1)
