"""rlnotes.bandits: the softmax bandit, its score, Fisher matrix and exact KL, on ordinary and on
extreme logits; actions, samples and shapes checked."""

import math

import numpy as np
import pytest

from rlnotes import bandits
from rlnotes.bandits import SoftmaxBandit


def finite_difference(f, theta, h=1e-6):
    grad = np.zeros_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        grad[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad


def test_softmax_is_stable_and_normalised():
    p = bandits.softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(1.0)


def test_exact_gradient_matches_finite_differences():
    bandit = SoftmaxBandit(means=[1.0, 0.2, -0.5, 0.7])
    theta = np.array([0.3, -0.1, 0.8, 0.0])
    fd = finite_difference(bandit.expected_reward, theta)
    np.testing.assert_allclose(bandit.exact_gradient(theta), fd, atol=1e-8)


def test_score_is_gradient_of_log_pi():
    theta = np.array([0.5, -1.0, 2.0])
    for a in range(3):
        fd = finite_difference(lambda t: np.log(bandits.softmax(t)[a]), theta)
        np.testing.assert_allclose(bandits.score(theta, [a])[0], fd, atol=1e-8)


def test_score_function_estimator_is_unbiased_with_and_without_baseline():
    bandit = SoftmaxBandit(means=[1.0, 0.0, 0.5], noise_std=0.5)
    theta = np.array([0.2, 0.1, -0.3])
    exact = bandit.exact_gradient(theta)
    for b in (0.0, bandit.expected_reward(theta)):
        g = bandit.score_function_samples(theta, 200_000, np.random.default_rng(0), baseline=b)
        se = g.std(axis=0) / np.sqrt(len(g))
        assert np.all(np.abs(g.mean(axis=0) - exact) < 5 * se)


def test_baseline_lowers_variance():
    bandit = SoftmaxBandit(means=[5.0, 4.0, 6.0], noise_std=0.5)
    theta = np.zeros(3)
    plain = bandit.score_function_samples(theta, 20_000, np.random.default_rng(1))
    based = bandit.score_function_samples(theta, 20_000, np.random.default_rng(1),
                                          baseline=bandit.expected_reward(theta))
    assert based.var(axis=0).sum() < 0.2 * plain.var(axis=0).sum()


def test_fisher_is_expected_outer_product_of_scores():
    theta = np.array([0.4, -0.2, 1.1])
    pi = bandits.softmax(theta)
    s = bandits.score(theta, np.arange(3))
    expected = sum(pi[a] * np.outer(s[a], s[a]) for a in range(3))
    np.testing.assert_allclose(bandits.fisher(theta), expected, atol=1e-12)


def test_kl_closed_form():
    assert bandits.kl(np.zeros(3), np.zeros(3)) == pytest.approx(0.0)
    p, q = bandits.softmax(np.array([1.0, 0.0])), bandits.softmax(np.array([0.0, 1.0]))
    assert bandits.kl(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.sum(p * np.log(p / q)))


def test_bad_input():
    with pytest.raises(ValueError, match="means"):
        SoftmaxBandit(means=[1.0])
    with pytest.raises(ValueError, match="noise_std"):
        SoftmaxBandit(means=[1.0, 2.0], noise_std=-1.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        SoftmaxBandit(means=[1.0, 2.0]).sample(np.zeros(2), 0, np.random.default_rng(0))


# ----- extreme logits, actions, samples and shapes ----------------------------------------------

def test_kl_is_exact_on_extreme_logits():
    assert bandits.kl([800.0, 0.0], [0.0, 0.0]) == pytest.approx(math.log(2), abs=1e-12)
    assert bandits.kl([0.0, -800.0], [0.0, 0.0]) == pytest.approx(math.log(2), abs=1e-12)  # 0 log 0 = 0
    assert bandits.kl([0.0, 0.0], [800.0, 0.0]) == pytest.approx(400 + math.log(0.5), rel=1e-12)
    theta = np.array([1e4, 0.0, -1e4])
    assert bandits.kl(theta, theta) == 0.0


def test_softmax_score_fisher_on_extreme_logits():
    assert bandits.softmax([1e4, 0.0, -1e4]).tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_array_equal(bandits.score([1e4, 0.0], [1]), [[-1.0, 1.0]])
    np.testing.assert_array_equal(bandits.fisher([1e4, 0.0]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="theta must be finite"):
        bandits.softmax([np.inf, 0.0])
    with pytest.raises(ValueError, match="theta must be finite"):
        bandits.fisher([np.nan, 0.0])


def test_bandit_actions_and_shapes():
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\)"):
        bandits.score(np.zeros(3), [-1])  # formerly: silently the last arm
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\)"):
        bandits.score(np.zeros(3), [3])
    with pytest.raises(TypeError, match="actions must be integers"):
        bandits.score(np.zeros(3), [0.5])
    with pytest.raises(ValueError, match="theta must be a 1-D vector"):
        bandits.fisher(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"theta_old and theta must have the same shape, got \(2,\) and \(3,\)"):
        bandits.kl(np.zeros(2), np.zeros(3))
    bandit = bandits.SoftmaxBandit(means=[0.0, 1.0])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bandit.sample(np.zeros(2), 0, rng)
    with pytest.raises(ValueError, match="theta must have one logit per arm, k = 2"):
        bandit.sample(np.zeros(3), 5, rng)
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        bandit.sample(np.zeros(2), 5, 0)
    with pytest.raises(ValueError, match="theta must have one logit per arm"):
        bandit.expected_reward(np.zeros(3))
    with pytest.raises(ValueError, match="means must be finite"):
        bandits.SoftmaxBandit(means=[0.0, np.nan])
    with pytest.raises(ValueError, match="baseline must be a finite number"):
        bandit.score_function_samples(np.zeros(2), 5, rng, baseline=float("nan"))
