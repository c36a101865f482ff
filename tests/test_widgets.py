import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlnotes import widgets  # noqa: E402


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(found.get_xdata(), float), np.asarray(found.get_ydata(), float)


def shaded(ax):
    """x-intervals of the shaded "flat" regions."""
    spans = [p for p in ax.patches if p.get_label() == widgets.FLAT]
    out = []
    for p in spans:
        xs = p.get_patch_transform().transform(p.get_path().vertices)[:, 0]  # Rectangle or Polygon
        out.append((round(float(xs.min()), 6), round(float(xs.max()), 6)))
    return out


@pytest.mark.parametrize("advantage", [1.0, -1.0, 0.7, -1.8])
def test_figure_data_closed_form(advantage):
    eps = 0.2
    ax = widgets.clip_plot_figure(eps, advantage)
    r, l_clip = line(ax, widgets.CLIP)
    r2, unclipped = line(ax, widgets.UNCLIPPED)
    np.testing.assert_allclose(unclipped, r2 * advantage)
    expected = np.minimum(r * advantage, np.clip(r, 1 - eps, 1 + eps) * advantage)
    np.testing.assert_allclose(l_clip, expected)
    # flat exactly in the shaded region: above 1 + eps for A > 0, below 1 - eps for A < 0
    slope = np.diff(l_clip) / np.diff(r)
    mid = 0.5 * (r[1:] + r[:-1])
    flat = (mid > 1 + eps) if advantage > 0 else (mid < 1 - eps)
    np.testing.assert_allclose(slope[flat], 0.0, atol=1e-9)
    np.testing.assert_allclose(slope[~flat], advantage, rtol=1e-6)
    assert shaded(ax) == ([(1.2, 2.0)] if advantage > 0 else [(0.0, 0.8)])
    # the red dot at r = 1, where L^CLIP = A
    x, y = line(ax, widgets.RATIO_ONE)
    assert x.tolist() == [1.0] and y.tolist() == pytest.approx([advantage])
    assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(ax.figure)


def test_zero_advantage_is_flat_everywhere_and_bad_eps_rejected():
    ax = widgets.clip_plot_figure(0.3, 0.0)
    assert shaded(ax) == [(0.0, 2.0)]
    plt.close(ax.figure)
    assert widgets.flat_region(0.2, 1.0) == (1.2, 2.0)
    assert widgets.flat_region(0.2, -1.0) == (0.0, 0.8)
    with pytest.raises(ValueError, match="eps"):
        widgets.clip_plot_figure(0.0, 1.0)
    with pytest.raises(ValueError, match="eps"):
        widgets.clip_plot_figure(float("nan"), 1.0)


def test_paper_figure_has_both_panels():
    fig = widgets.paper_figure(0.2)
    left, right = fig.axes
    assert shaded(left) == [(1.2, 2.0)] and shaded(right) == [(0.0, 0.8)]
    assert line(left, widgets.RATIO_ONE)[1].tolist() == [1.0] and line(right, widgets.RATIO_ONE)[1].tolist() == [-1.0]
    plt.close(fig)


def test_widget_callback_redraws_with_new_slider_values():
    w = widgets.clip_plot(eps=0.2, advantage=1.0)
    assert isinstance(w, widgets.ClipPlot)
    assert w.advantage_slider.min < 0 < w.advantage_slider.max  # both signs of A
    r, y = line(w.ax, widgets.CLIP)
    assert y.max() == pytest.approx(1.2)
    w.eps_slider.value = 0.3  # the observer calls redraw
    r, y = line(w.ax, widgets.CLIP)
    assert y.max() == pytest.approx(1.3)
    assert shaded(w.ax) == [(1.3, 2.0)]
    w.advantage_slider.value = -0.5
    r, y = line(w.ax, widgets.CLIP)
    np.testing.assert_allclose(y, np.maximum(r, 0.7) * -0.5)
    assert shaded(w.ax) == [(0.0, 0.7)]
    assert line(w.ax, widgets.RATIO_ONE)[1].tolist() == [-0.5]
    assert [ln.get_label() for ln in w.ax.get_lines()].count(widgets.CLIP) == 1  # redrawn, not stacked
    # driving the callback directly works too
    w.eps_slider.value, w.advantage_slider.value = 0.1, 2.0
    w.redraw()
    assert line(w.ax, widgets.CLIP)[1].max() == pytest.approx(2.2)


def test_widget_rejects_bad_start_values():
    with pytest.raises(ValueError, match="eps"):
        widgets.clip_plot(eps=0.0)
    with pytest.raises(ValueError, match="advantage"):
        widgets.clip_plot(advantage=5.0)
