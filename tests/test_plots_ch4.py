"""rlnotes.plots, chapter 4's figures: each draws what it says and refuses what it cannot draw."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from rlnotes import plots
from rlnotes.trainer import History


def logged(seed: int, n: int = 30, **scale) -> History:
    rng = np.random.default_rng(seed)
    h = History()
    for i in range(n):
        h.log({k: s * (i + rng.uniform()) for k, s in {"loss": -0.1, "accuracy": 0.01, "r_star": 0.05,
                                                          "kl/exact_per_sequence": 0.2, "beta": 0.01,
                                                          **scale}.items()})
    return h


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_batch_curves_draws_raw_values_their_moving_mean_and_reference_lines():
    h = logged(0)
    axes = plots.batch_curves(h, {"loss": "loss [nats]", "accuracy": "accuracy"}, smooth=5,
                              lines={"loss": [(-1.0, "log 2")]}, title="reward model")
    assert len(axes) == 2 and axes[0].get_ylabel() == "loss [nats]"
    raw, mean, ref = axes[0].get_lines()
    np.testing.assert_allclose(raw.get_ydata(), h.update_array("loss"))
    np.testing.assert_allclose(mean.get_ydata(), np.convolve(h.update_array("loss"), np.ones(5) / 5, "valid"))
    np.testing.assert_array_equal(mean.get_xdata(), np.arange(5, 31))
    assert ref.get_label() == "log 2" and ref.get_ydata()[0] == -1.0
    assert len(axes[1].get_lines()) == 2   # no reference line asked for there
    with pytest.raises(ValueError, match="smooth"):
        plots.batch_curves(h, {"loss": "loss"}, smooth=31)
    with pytest.raises(KeyError, match="no metric 'missing'"):
        plots.batch_curves(h, {"missing": "?"})
    with pytest.raises(ValueError, match="one axes per panel"):
        plots.batch_curves(h, {"loss": "loss", "accuracy": "acc"}, axes=plt.subplots(1, 3)[1])


def test_update_curves_draws_the_mean_over_seeds_and_the_min_max_band():
    seeds = [logged(0), logged(1), logged(2)]
    axes = plots.update_curves({"beta = 0.3": seeds, "beta = 1": logged(3)},
                               {"r_star": "true reward", "kl/exact_per_sequence": "KL [nats]"})
    assert [ax.get_ylabel() for ax in axes] == ["true reward", "KL [nats]"]
    curves = np.stack([h.update_array("kl/exact_per_sequence") for h in seeds])
    mean = axes[1].get_lines()[0]
    np.testing.assert_allclose(mean.get_ydata(), curves.mean(0))
    assert mean.get_label() == "beta = 0.3 (3 seeds)"
    band = [c for c in axes[1].collections if isinstance(c, PolyCollection)]
    assert len(band) == 1                                  # one band: the one-seed run has none
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(curves.min()) and ys.max() == pytest.approx(curves.max())
    with pytest.raises(TypeError, match="panels"):
        plots.update_curves({"a": seeds}, {})


def test_adaptive_kl_puts_kl_and_beta_on_their_own_axes():
    h = logged(0)
    ax, twin = plots.adaptive_kl(h, 2.0)
    kl, target = ax.get_lines()
    np.testing.assert_allclose(kl.get_ydata(), h.update_array("kl/exact_per_sequence"))
    assert target.get_ydata()[0] == 2.0
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), h.update_array("beta"))
    assert "nats" in ax.get_ylabel() and "beta" in twin.get_ylabel()
    with pytest.raises(ValueError, match="target"):
        plots.adaptive_kl(h, 0.0)


def test_reward_model_vs_truth_marks_the_mean_per_true_reward():
    r_star = np.array([-1, -1, 0, 0, 1, 1], dtype=float)
    r_phi = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    ax = plots.reward_model_vs_truth(r_star, r_phi)
    means = [l.get_ydata()[0] for l in ax.get_lines() if len(l.get_ydata())]
    assert means == [-1.5, 0.25, 2.0]
    assert "0.9" in ax.get_title()   # the correlation, printed
    with pytest.raises(ValueError, match="equal length"):
        plots.reward_model_vs_truth(r_star, r_phi[:3])


def test_centring_variance_draws_each_seeds_parabola():
    res = {s: {"constant_parabola": (2.0, -4.0, 10.0 + s), "offset": 1.0,
               "variance": {"uncentred": 10.0 + s, "global": 8.0 + s, "per_prompt": 6.0 + s}} for s in (0, 1)}
    ax = plots.centring_variance(res)
    curve = ax.get_lines()[0]
    b = curve.get_xdata()
    np.testing.assert_allclose(curve.get_ydata(), 2 * b ** 2 - 4 * b + 10)
    assert ax.get_ylim()[0] == 0
    with pytest.raises(TypeError, match="results"):
        plots.centring_variance({})
