"""A k-armed bandit with a softmax policy, where every quantity has a closed form.

The policy is pi_theta(a) = softmax(theta)_a, the reward of arm a is drawn from
N(mu_a, noise_std^2). Because there is a single state and a finite set of actions, the
objective, its gradient, the Fisher matrix and the KL divergence are exact sums over the
arms, so the estimators of chapters 1 and 2 can be checked against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .utils import check_positive, check_positive_int


def softmax(theta: np.ndarray) -> np.ndarray:
    """pi_theta(a) = exp(theta_a) / sum_b exp(theta_b), over the last axis, computed stably."""
    z = np.asarray(theta, dtype=float)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def score(theta: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """grad_theta log pi_theta(a) = onehot(a) - pi_theta, one row per action: shape [n, k]."""
    pi = softmax(theta)
    onehot = np.eye(len(pi))[np.asarray(actions)]
    return onehot - pi


def fisher(theta: np.ndarray) -> np.ndarray:
    """Exact Fisher matrix F = E_a[score score^T] = diag(pi) - pi pi^T of the softmax policy."""
    pi = softmax(theta)
    return np.diag(pi) - np.outer(pi, pi)


def kl(theta_old: np.ndarray, theta: np.ndarray) -> float:
    """Exact KL[pi_old || pi] = sum_a pi_old(a) (log pi_old(a) - log pi(a))."""
    log_old = np.log(softmax(theta_old))
    log_new = np.log(softmax(theta))
    return float(np.sum(np.exp(log_old) * (log_old - log_new)))


@dataclass
class SoftmaxBandit:
    """k arms with mean rewards ``means`` and Gaussian reward noise of std ``noise_std``."""

    means: np.ndarray
    noise_std: float = 1.0

    def __post_init__(self):
        self.means = np.asarray(self.means, dtype=float)
        if self.means.ndim != 1 or len(self.means) < 2:
            raise ValueError(f"means must be a 1-D array of at least 2 arms, got shape {self.means.shape}")
        if self.noise_std != 0:
            check_positive("noise_std", self.noise_std)

    @property
    def k(self) -> int:
        return len(self.means)

    def expected_reward(self, theta: np.ndarray) -> float:
        """J(theta) = E_{a ~ pi_theta}[r(a)] = sum_a pi_theta(a) mu_a."""
        return float(softmax(theta) @ self.means)

    def exact_gradient(self, theta: np.ndarray) -> np.ndarray:
        """grad J(theta) = sum_a pi(a) mu_a grad log pi(a) = pi * (mu - J): the closed form."""
        pi = softmax(theta)
        return pi * (self.means - pi @ self.means)

    def sample(self, theta: np.ndarray, n: int, rng: np.random.Generator):
        """Draw ``n`` actions a ~ pi_theta and their noisy rewards: returns (actions, rewards)."""
        n = check_positive_int("n", n)
        actions = rng.choice(self.k, size=n, p=softmax(theta))
        rewards = self.means[actions] + self.noise_std * rng.standard_normal(n)
        return actions, rewards

    def score_function_samples(self, theta, n, rng, baseline: float = 0.0) -> np.ndarray:
        """Per-sample terms grad log pi(a_i) * (r_i - b) of the estimator g = E[grad log pi * A].

        The mean of the rows is the score-function (REINFORCE) estimate of grad J; with a
        baseline b the advantage estimate is A_i = r_i - b. Shape [n, k].
        """
        actions, rewards = self.sample(theta, n, rng)
        return score(theta, actions) * (rewards - baseline)[:, None]
