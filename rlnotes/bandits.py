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


def _as_theta(theta, name: str = "theta", k: int | None = None, vector: bool = False) -> np.ndarray:
    """``theta`` as a float array, checked: finite, arms on the last axis (exactly ``k`` if given)."""
    try:
        z = np.asarray(theta, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers (logits), got {theta!r}") from None
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one logit per arm on its last axis, got shape {z.shape}")
    if vector and z.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of logits [k], got shape {z.shape}")
    if k is not None and z.shape[-1] != k:
        raise ValueError(f"{name} must have one logit per arm, k = {k}, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
    return z


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """log pi_theta = theta - logsumexp(theta): finite wherever theta is, even where pi underflows to 0."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(theta: np.ndarray) -> np.ndarray:
    """pi_theta(a) = exp(theta_a) / sum_b exp(theta_b), over the last axis, computed stably."""
    return _softmax(_as_theta(theta))


def _check_actions(actions, k: int) -> np.ndarray:
    a = np.asarray(actions)
    if a.size == 0 and a.dtype.kind == "f":
        a = a.astype(int)  # an empty list
    if a.dtype.kind not in "iu" or a.ndim > 1:
        raise TypeError(f"actions must be integers (arm indices) in [0, {k}), one per sample, "
                        f"got {a.dtype} array of shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"actions must be in [0, {k}) (k = {k} arms), got values from {a.min()} to {a.max()}")
    return a


def score(theta: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """grad_theta log pi_theta(a) = onehot(a) - pi_theta, one row per action: shape [n, k]."""
    pi = softmax(_as_theta(theta, vector=True))
    onehot = np.eye(len(pi))[_check_actions(actions, len(pi))]
    return onehot - pi


def fisher(theta: np.ndarray) -> np.ndarray:
    """Exact Fisher matrix F = E_a[score score^T] = diag(pi) - pi pi^T of the softmax policy."""
    pi = softmax(_as_theta(theta, vector=True))
    return np.diag(pi) - np.outer(pi, pi)


def kl(theta_old: np.ndarray, theta: np.ndarray) -> float:
    """Exact KL[pi_old || pi] = sum_a pi_old(a) (log pi_old(a) - log pi(a)).

    Computed from log-softmax (theta - logsumexp theta), so it stays finite on extreme logits,
    with 0 log 0 = 0 where pi_old(a) is exactly 0.
    """
    z_old, z = _as_theta(theta_old, "theta_old"), _as_theta(theta)
    if z_old.shape != z.shape:
        raise ValueError(f"theta_old and theta must have the same shape, got {z_old.shape} and {z.shape}")
    log_old, log_new = _log_softmax(z_old), _log_softmax(z)
    p_old = np.exp(log_old)
    terms = np.where(p_old > 0, p_old * (log_old - log_new), 0.0)
    return float(np.sum(terms))


@dataclass
class SoftmaxBandit:
    """k arms with mean rewards ``means`` and Gaussian reward noise of std ``noise_std``."""

    means: np.ndarray
    noise_std: float = 1.0

    def __post_init__(self):
        try:
            self.means = np.asarray(self.means, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"means must be an array of numbers, got {self.means!r}") from None
        if self.means.ndim != 1 or len(self.means) < 2:
            raise ValueError(f"means must be a 1-D array of at least 2 arms, got shape {self.means.shape}")
        if not np.all(np.isfinite(self.means)):
            raise ValueError("means must be finite (it holds NaN or inf)")
        if isinstance(self.noise_std, (str, bytes)):
            raise TypeError(f"noise_std must be a number, got {self.noise_std!r}")
        if self.noise_std != 0:
            check_positive("noise_std", self.noise_std)

    @property
    def k(self) -> int:
        return len(self.means)

    def expected_reward(self, theta: np.ndarray) -> float:
        """J(theta) = E_{a ~ pi_theta}[r(a)] = sum_a pi_theta(a) mu_a."""
        return float(_softmax(_as_theta(theta, k=self.k, vector=True)) @ self.means)

    def exact_gradient(self, theta: np.ndarray) -> np.ndarray:
        """grad J(theta) = sum_a pi(a) mu_a grad log pi(a) = pi * (mu - J): the closed form."""
        pi = _softmax(_as_theta(theta, k=self.k, vector=True))
        return pi * (self.means - pi @ self.means)

    def sample(self, theta: np.ndarray, n: int, rng: np.random.Generator):
        """Draw ``n`` actions a ~ pi_theta and their noisy rewards: returns (actions, rewards)."""
        n = check_positive_int("n", n)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
        actions = rng.choice(self.k, size=n, p=_softmax(_as_theta(theta, k=self.k, vector=True)))
        rewards = self.means[actions] + self.noise_std * rng.standard_normal(n)
        return actions, rewards

    def score_function_samples(self, theta, n, rng, baseline: float = 0.0) -> np.ndarray:
        """Per-sample terms grad log pi(a_i) * (r_i - b) of the estimator g = E[grad log pi * A].

        The mean of the rows is the score-function (REINFORCE) estimate of grad J; with a
        baseline b the advantage estimate is A_i = r_i - b. Shape [n, k].
        """
        if isinstance(baseline, (str, bytes)) or not np.all(np.isfinite(baseline)):
            raise ValueError(f"baseline must be a finite number, got {baseline!r}")
        actions, rewards = self.sample(theta, n, rng)
        return score(theta, actions) * (rewards - baseline)[:, None]
