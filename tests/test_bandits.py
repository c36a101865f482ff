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
