import numpy as np
import pytest

from rlnotes import stats


def test_standard_error_is_sd_over_sqrt_n():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    assert stats.standard_error(x) == pytest.approx(np.std(x, ddof=1) / 2)


def test_iqm_drops_a_quarter_at_each_end():
    # rliable's IQM is scipy.stats.trim_mean(x, 0.25): n = 8 drops 2 at each end
    assert stats.iqm([100.0, 1, 2, 3, 4, 5, 6, -100]) == pytest.approx(np.mean([2, 3, 4, 5]))
    # n = 10 drops floor(2.5) = 2 at each end
    x = np.arange(10.0)
    assert stats.iqm(x) == pytest.approx(np.mean(x[2:8]))
    assert stats.iqm([3.0]) == 3.0


def test_bootstrap_interval_matches_the_normal_interval_for_a_large_sample():
    x = np.random.default_rng(1).normal(2.0, 1.0, size=2_000)
    low, high = stats.bootstrap_interval(x, reps=2_000)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.2 * se)
    assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.2 * se)


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = [1.0, 5.0, 2.0, 8.0, 3.0]
    assert stats.bootstrap_interval(x) == stats.bootstrap_interval(x)
    low, high = stats.bootstrap_interval(x)
    assert low < np.mean(x) < high


def test_difference_interval_excludes_zero_only_for_a_real_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 10), rng.normal(0.0, 0.1, 10)
    low, high = stats.difference_interval(a, b)
    assert 0.8 < low < 1 < high < 1.2
    low, high = stats.difference_interval(a, a + rng.normal(0, 0.01, 10))
    assert low < 0 < high


def test_probability_of_improvement_is_the_mann_whitney_statistic():
    assert stats.probability_of_improvement([2.0, 3.0], [1.0, 1.5]) == 1.0
    assert stats.probability_of_improvement([1.0], [1.0]) == 0.5
    # 2 beats 1 and ties 2; 0 loses both: (1 + 0.5 + 0 + 0) / 4
    assert stats.probability_of_improvement([2.0, 0.0], [1.0, 2.0]) == pytest.approx(0.375)


def test_summary_keys():
    s = stats.summary([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["n"] == 4 and s["ci"][0] < 2.5 < s["ci"][1]


@pytest.mark.parametrize("bad, message", [
    ([1.0], "at least 2"), ([[1.0, 2.0]], "one-dimensional"), ([1.0, np.nan], "finite")])
def test_bad_samples_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.standard_error(bad)


def test_bad_level_is_refused():
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_interval([1.0, 2.0], level=1.5)
