"""Evidence over seeds and samples: standard errors, intervals, the interquartile mean.

Every comparison the book makes between methods or settings runs several seeds, and every
evaluation of a policy is a mean over samples. These functions say how far such a number can
move on a rerun (another seed set, another CPU's rounding), after Agarwal et al. (2021),
*Deep RL at the edge of the statistical precipice* (the ``rliable`` library): the interquartile
mean (IQM), percentile-bootstrap intervals, and the probability of improvement. They are small
NumPy functions, seeded, so a page that prints an interval prints the same one every run.
"""

from __future__ import annotations

import numpy as np

from .utils import check_in_range, check_positive_int


def _sample(name: str, x, minimum: int = 2) -> np.ndarray:
    """``x`` as a 1-D float array of at least ``minimum`` finite values, or a clear error."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per seed or sample), got shape {arr.shape}")
    if len(arr) < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {arr[~np.isfinite(arr)][:4]}")
    return arr


def standard_error(x) -> float:
    """SE(x-bar) = s / sqrt(n), with the sample standard deviation s (ddof = 1)."""
    x = _sample("x", x)
    return float(x.std(ddof=1) / np.sqrt(len(x)))


def iqm(x) -> float:
    """The interquartile mean: the mean of the middle half after dropping floor(n/4) values at
    each end (``scipy.stats.trim_mean(x, 0.25)``, as rliable computes it). Robust to one seed
    that collapses, unlike the mean; less noisy than the median."""
    x = np.sort(_sample("x", x, minimum=1))
    cut = len(x) // 4
    return float(x[cut:len(x) - cut].mean())


def bootstrap_interval(x, statistic=np.mean, *, level: float = 0.95, reps: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap interval of ``statistic(x)``: resample the ``n`` values with
    replacement ``reps`` times and take the (1 - level)/2 and (1 + level)/2 quantiles of the
    statistic. Seeded, so the same data give the same interval."""
    x = _sample("x", x)
    level = check_in_range("level", level, 0.5, 0.999)
    reps = check_positive_int("reps", reps, 100)
    rng = np.random.default_rng(check_positive_int("seed", seed, 0))
    idx = rng.integers(0, len(x), size=(reps, len(x)))
    stats = np.array([statistic(row) for row in x[idx]])
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def difference_interval(a, b, statistic=np.mean, *, level: float = 0.95, reps: int = 10_000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(a) - statistic(b)``, each resampled on its own
    (stratified: two independent sets of runs). If the interval excludes 0 the difference is
    more than the seed-to-seed noise explains, at that level."""
    a, b = _sample("a", a), _sample("b", b)
    level = check_in_range("level", level, 0.5, 0.999)
    reps = check_positive_int("reps", reps, 100)
    rng = np.random.default_rng(check_positive_int("seed", seed, 0))
    ia = rng.integers(0, len(a), size=(reps, len(a)))
    ib = rng.integers(0, len(b), size=(reps, len(b)))
    diffs = np.array([statistic(ra) - statistic(rb) for ra, rb in zip(a[ia], b[ib])])
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def probability_of_improvement(a, b) -> float:
    """P(X > Y) + P(X = Y) / 2 for X drawn from the runs ``a`` and Y from ``b`` (the
    Mann-Whitney statistic over n_a * n_b pairs): how often a run of ``a`` beats one of ``b``."""
    a, b = _sample("a", a, 1), _sample("b", b, 1)
    diff = a[:, None] - b[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def summary(x, *, level: float = 0.95, seed: int = 0) -> dict:
    """``mean``, its ``se``, the bootstrap interval ``ci`` of the mean, ``iqm`` and ``n``: what a
    page prints for a set of runs."""
    x = _sample("x", x)
    return dict(mean=float(x.mean()), se=standard_error(x), ci=bootstrap_interval(x, level=level, seed=seed),
                iqm=iqm(x), n=len(x))
