"""rlnotes.plots: each figure function draws what it says, labels its axes with units, returns the axes,
and refuses what it cannot draw."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from rlnotes import plots
from rlnotes.trainer import History


def history(seed: int, n_updates: int = 20) -> History:
    rng = np.random.default_rng(seed)
    h = History()
    for i in range(1, 200):
        h.add_episode(250 * i, float(min(500, 2 * i + rng.integers(0, 20))))
    for i in range(1, n_updates + 1):
        h.log({"env_steps": 512 * i, "kl/exact_per_state": 10.0 ** rng.uniform(-4, -1) if i != 3 else 0.0})
    return h


def bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_learning_curves_draws_a_mean_and_a_band_per_learner():
    runs = {"PG": [history(0), history(1), history(2)], "PPO": {0: history(3), 1: history(4)}}
    grid = np.arange(2_000, 40_001, 1_000)
    ax = plots.learning_curves(runs, grid, baseline=(22.7, "random policy"), title="CartPole")
    assert isinstance(ax, plt.Axes)
    means = [l for l in ax.get_lines() if l.get_label() != "random policy"]
    assert len(means) == 2 and len(bands(ax)) == 2
    assert [l.get_label() for l in means] == ["PG (mean of 3 seeds)", "PPO (mean of 2 seeds)"]
    curves = np.stack([h.curve(grid) for h in runs["PG"]])
    np.testing.assert_allclose(means[0].get_ydata(), np.nanmean(curves, axis=0))
    band = bands(ax)[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(np.nanmin(curves)) and band.max() == pytest.approx(np.nanmax(curves))
    assert ax.get_xlabel() == "environment steps" and "return" in ax.get_ylabel()
    assert ax.get_title() == "CartPole" and ax.get_legend() is not None
    assert any(l.get_label() == "random policy" and l.get_ydata()[0] == 22.7 for l in ax.get_lines())


def test_learning_curves_se_band_is_two_standard_errors_of_the_mean():
    runs = {"PG": [history(0), history(1), history(2)]}
    grid = np.arange(2_000, 40_001, 1_000)
    ax = plots.learning_curves(runs, grid, band="se")
    curves = np.stack([h.curve(grid) for h in runs["PG"]])
    half = 2 * np.nanstd(curves, axis=0, ddof=1) / np.sqrt(np.isfinite(curves).sum(axis=0))
    ys = bands(ax)[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(np.nanmin(np.nanmean(curves, axis=0) - half))
    assert ys.max() == pytest.approx(np.nanmax(np.nanmean(curves, axis=0) + half))
    assert "standard errors" in ax.get_title()
    with pytest.raises(ValueError, match="band must be 'minmax' or 'se', got 'ci'"):
        plots.learning_curves(runs, grid, band="ci")


def test_learning_curves_one_seed_has_no_band_and_uses_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    assert plots.learning_curves({"PG": history(0)}, [1_000, 2_000, 3_000], ax=right, colors={"PG": "C2"}) is right
    assert len(right.get_lines()) == 1 and not bands(right) and not left.get_lines()
    assert right.get_lines()[0].get_color() == "C2"


def test_kl_per_update_is_a_log_axis_in_nats_with_every_seed():
    runs = {"PG": [history(0), history(1)], "TRPO": [history(2)]}
    ax = plots.kl_per_update(runs, floor=1e-6, lines=[(0.01, "delta = 0.01")])
    assert ax.get_yscale() == "log" and "[nats]" in ax.get_ylabel() and "1e-06" in ax.get_ylabel()
    data = [l for l in ax.get_lines() if l.get_label() != "delta = 0.01"]
    assert len(data) == 3                                            # every seed
    assert len({l.get_color() for l in data}) == 2                   # one colour per learner
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PG", "TRPO", "delta = 0.01"]
    assert data[0].get_ydata().min() == 1e-6                          # the update with KL 0 at the floor
    np.testing.assert_array_equal(data[0].get_xdata(), history(0).update_array("env_steps"))
    assert ax.get_xlabel() == "environment steps"
    ax = plots.kl_per_update(runs, colors={"TRPO": "C1", "PG": "C0"})
    assert [l.get_color() for l in ax.get_lines()] == ["C0", "C0", "C1"]


def test_kl_per_update_without_env_steps_counts_updates():
    h = History()
    for kl in [0.1, 0.2, 0.05]:
        h.log(kl_seq=kl)
    ax = plots.kl_per_update({"LM": h}, key="kl_seq")
    assert ax.get_xlabel() == "update" and list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]


def test_reward_kl_frontier_orders_points_by_kl_and_labels_them():
    points = [("beta=0.1", {"kl/exact_per_sequence": 5.0, "r_star": 1.0, "r_phi": 2.0}),
              ("SFT", {"kl/exact_per_sequence": 0.0, "r_star": 0.0, "r_phi": 0.1}),
              ("beta=1", {"kl/exact_per_sequence": 1.0, "r_star": 0.5, "r_phi": 0.6})]
    ax = plots.reward_kl_frontier(points)
    true, model = ax.get_lines()
    assert list(true.get_xdata()) == [0.0, 1.0, 5.0] and list(true.get_ydata()) == [0.0, 0.5, 1.0]
    assert list(model.get_ydata()) == [0.1, 0.6, 2.0]
    assert [t.get_text() for t in ax.texts] == ["SFT", "beta=1", "beta=0.1"]
    assert "[nats]" in ax.get_xlabel() and ax.get_xscale() == "symlog" and ax.get_ylabel()
    ax2 = plots.reward_kl_frontier(points, rewards={"r_star": "r*"}, annotate=False, symlog=False)
    assert len(ax2.get_lines()) == 1 and not ax2.texts and ax2.get_xscale() == "linear"


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(TypeError, match="runs"):
        plots.learning_curves([history(0)], [1, 2])
    with pytest.raises(ValueError, match="grid"):
        plots.learning_curves({"PG": history(0)}, [5])
    with pytest.raises(ValueError, match="floor"):
        plots.kl_per_update({"PG": history(0)}, floor=0)
    with pytest.raises(ValueError, match="lack"):
        plots.reward_kl_frontier([("SFT", {"r_star": 0.0})])
    with pytest.raises(ValueError, match="runs\\['PG'\\]"):
        plots.learning_curves({"PG": []}, [1, 2])


def trpo_history(seed: int, n: int = 30, delta: float = 0.01) -> History:
    rng = np.random.default_rng(seed)
    h = History()
    for i in range(1, n + 1):
        full = delta * rng.uniform(0.3, 1.3)
        h.log({"env_steps": 512 * i, "kl/exact_per_state_full_step": full,
               "kl/exact_per_state": min(full, delta * 0.95), "backtracks": float(full > delta)})
    return h


def test_trpo_line_search_shows_full_and_taken_steps_against_delta():
    runs = {"TRPO": [trpo_history(0), trpo_history(1)]}
    left, right = plots.trpo_line_search(runs, 0.01)
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert legend == ["TRPO", "full step (before the line search)", "step taken", "trust region $\\delta$ = 0.01"]
    assert len(left.get_lines()) == 2 * 2 + 2 + 1                      # 2 seeds x (full, taken), 2 keys, delta
    assert any(l.get_ydata()[0] == 0.01 for l in left.get_lines() if "delta" in l.get_label())
    assert "[nats]" in left.get_ylabel() and left.get_xlabel() == "environment steps"
    full = np.concatenate([h.update_array("kl/exact_per_state_full_step") for h in runs["TRPO"]])
    assert sum(p.get_height() for p in right.patches) == len(full)    # every update in the histogram
    assert f"{np.sum(full > 0.01)} of {len(full)}" in right.get_title()
    assert "delta" in right.get_xlabel()
    with pytest.raises(ValueError, match="delta"):
        plots.trpo_line_search(runs, 0)


def dpo_updates(n: int = 30) -> dict:
    rng = np.random.default_rng(0)
    u = {k: rng.normal(size=n) for k in ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                         "logps/chosen", "logps/rejected", "rewards/accuracies"]}
    u |= {"eval/step": np.array([10, 20, 30]), "eval/loss": np.array([0.69, 0.65, 0.6]),
          "eval/accuracy": np.array([0.5, 0.6, 0.65]), "eval/r_star": np.array([0.0, 0.4, 0.8])}
    return u


def test_dpo_training_puts_one_quantity_on_each_axis():
    axes = plots.dpo_training(dpo_updates(), reference_accuracy=0.72, smooth=5)
    (loss, rew), (logp, acc) = axes
    assert [l.get_label() for l in loss.get_lines()] == ["train loss (per batch)", "held-out loss", "log 2"]
    assert loss.get_lines()[2].get_ydata()[0] == pytest.approx(np.log(2))
    assert [l.get_label() for l in rew.get_lines()][:3] == ["rewards/chosen", "rewards/rejected", "rewards/margins"]
    assert len(rew.get_lines()[0].get_xdata()) == 30 - 5 + 1          # moving mean over 5 batches
    assert "[nats]" in logp.get_ylabel()
    assert acc.get_ylabel() == "preference accuracy"                   # accuracy alone on its axis ...
    assert all("r*" not in l.get_label() for l in acc.get_lines())
    twin = [a for a in acc.figure.axes if a is not acc and a.bbox.bounds == acc.bbox.bounds]
    assert len(twin) == 1 and "r^*" in twin[0].get_ylabel()           # ... r* on its own axis
    assert len(acc.get_legend().get_texts()) == 4
    with pytest.raises(ValueError, match="lacks"):
        plots.dpo_training({"loss": [1.0]})
    with pytest.raises(ValueError, match="smooth"):
        plots.dpo_training(dpo_updates(), smooth=0)


# ----- PPO on one batch, passes per update (chapter 3) ----------------------------------------------

def one_batch(kl, outside=None):
    h = History()
    for i, k in enumerate(kl):
        h.log({"kl/exact_per_state": k, **({} if outside is None else {"outside": outside[i]})})
    return h


def test_ppo_one_batch_draws_both_runs_and_the_bound():
    clipped = one_batch([1e-3, 5e-3, 1e-2], outside=[0.0, 0.1, 0.2])
    unclipped = one_batch([1e-3, 1e-1, 2.0])
    left, right = plots.ppo_one_batch(clipped, unclipped.updates, eps=0.2, bound=0.03125)
    ys = [l.get_ydata() for l in left.get_lines()]
    np.testing.assert_allclose(ys[0], [1e-3, 5e-3, 1e-2])
    np.testing.assert_allclose(ys[1], [1e-3, 1e-1, 2.0])
    assert np.allclose(ys[2], 0.03125)                          # the in-clip bound
    assert left.get_yscale() == "log" and "nats" in left.get_ylabel()
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), [0.0, 0.1, 0.2])
    assert "[0.8, 1.2]" in right.get_ylabel()


def test_ppo_one_batch_errors():
    good = one_batch([1e-3], outside=[0.0])
    with pytest.raises(ValueError, match="outside"):
        plots.ppo_one_batch(one_batch([1e-3]), good, eps=0.2)
    with pytest.raises(ValueError, match="unclipped"):
        plots.ppo_one_batch(good, {"loss": [1.0]}, eps=0.2)
    with pytest.raises(ValueError, match="eps"):
        plots.ppo_one_batch(good, good, eps=1.5)


def test_passes_per_update_stacks_kinds_in_one_colour_each():
    costs = {"TRPO": {"first-order": 2, "Hessian-vector": 11, "value": 20},
             "PPO": {"first-order": 30}}
    ax = plots.passes_per_update(costs)
    patches = ax.patches
    assert len(patches) == 3 * 2                                    # one segment per kind per bar
    widths = {(p.get_y(), p.get_facecolor()): p.get_width() for p in patches}
    assert sorted(w for w in widths.values() if w) == [2, 11, 20, 30]
    first_order = [p for p in patches if p.get_label() == "first-order" or p.get_width() in (2, 30)]
    assert len({p.get_facecolor() for p in first_order}) == 1      # same kind, same colour
    # TRPO's bar ends at 2 + 11 + 20
    assert max(p.get_x() + p.get_width() for p in patches) == 33
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["first-order", "Hessian-vector", "value"]


def test_passes_per_update_errors():
    with pytest.raises(TypeError, match="costs"):
        plots.passes_per_update({})
    with pytest.raises(ValueError, match="TRPO"):
        plots.passes_per_update({"TRPO": {"x": -1}})


# ----- batch and update curves, the adaptive KL, the reward model (chapter 4) -----------------------

def logged(seed: int, n: int = 30, **scale) -> History:
    rng = np.random.default_rng(seed)
    h = History()
    for i in range(n):
        h.log({k: s * (i + rng.uniform()) for k, s in {"loss": -0.1, "accuracy": 0.01, "r_star": 0.05,
                                                          "kl/exact_per_sequence": 0.2, "beta": 0.01,
                                                          **scale}.items()})
    return h


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
    with pytest.raises(ValueError, match="one Axes per panel"):
        plots.batch_curves(h, {"loss": "loss", "accuracy": "acc"}, ax=plt.subplots(1, 3)[1])


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


# ----- the papers' figures: the clip plot (PPO, Figure 1) and the pipelines (DPO, Figure 1) -----------

def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(found.get_xdata(), float), np.asarray(found.get_ydata(), float)


def shaded(ax):
    """x-intervals of the shaded "flat" regions."""
    spans = [p for p in ax.patches if p.get_label() == plots.FLAT]
    out = []
    for p in spans:
        xs = p.get_patch_transform().transform(p.get_path().vertices)[:, 0]  # Rectangle or Polygon
        out.append((round(float(xs.min()), 6), round(float(xs.max()), 6)))
    return out


@pytest.mark.parametrize("advantage", [1.0, -1.0, 0.7, -1.8])
def test_clip_plot_figure_data_closed_form(advantage):
    eps = 0.2
    ax = plots.clip_plot_figure(eps, advantage)
    r, l_clip = line(ax, plots.CLIP)
    r2, unclipped = line(ax, plots.UNCLIPPED)
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
    x, y = line(ax, plots.RATIO_ONE)
    assert x.tolist() == [1.0] and y.tolist() == pytest.approx([advantage])
    assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(ax.figure)


def test_zero_advantage_is_flat_everywhere_and_bad_eps_rejected():
    ax = plots.clip_plot_figure(0.3, 0.0)
    assert shaded(ax) == [(0.0, 2.0)]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="eps"):
        plots.clip_plot_figure(0.0, 1.0)
    with pytest.raises(ValueError, match="eps"):
        plots.clip_plot_figure(float("nan"), 1.0)


def test_paper_figure_has_both_panels():
    fig = plots.paper_figure(0.2)
    left, right = fig.axes
    assert shaded(left) == [(1.2, 2.0)] and shaded(right) == [(0.0, 0.8)]
    assert line(left, plots.RATIO_ONE)[1].tolist() == [1.0] and line(right, plots.RATIO_ONE)[1].tolist() == [-1.0]
    plt.close(fig)


def test_pipeline_figure_labels():
    fig = plots.pipeline_figure()
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["RLHF (PPO)", "DPO"]
        labels = plots.figure_labels(fig)
        rlhf_labels = [t.get_text() for t in fig.axes[0].texts]
        dpo_labels = [t.get_text() for t in fig.axes[1].texts]
        assert rlhf_labels[:5] == list(plots.RLHF_STEPS) and dpo_labels == list(plots.DPO_STEPS)
        rlhf_labels, dpo_labels = ([" ".join(t.split()) for t in ls] for ls in (rlhf_labels, dpo_labels))
        for word in ("preference data", "reward model", "sample completions", "reinforcement learning", "final LM"):
            assert any(word in label for label in rlhf_labels), word
        for word in ("preference data", "maximum likelihood", "final LM"):
            assert any(word in label for label in dpo_labels), word
        assert not any("reward model" in label or "sample" in label for label in dpo_labels)
        assert len(labels) == len(rlhf_labels) + len(dpo_labels)
        fig.canvas.draw()                                   # the mathtext labels render
    finally:
        plt.close(fig)


# ----- chapter 6: every method on one frontier ----------------------------------------------------

FRONTIER_ROWS = [{"method": "PPO", "beta": 0.1, "seed": s, "r_star": r, "kl": k, "seconds": 1.0}
                 for s, (r, k) in enumerate([(0.5, 2.0), (0.2, 1.0), (0.8, 4.0)])]


def test_method_frontier_range_bars_span_the_seeds():
    ax = plots.method_frontier(FRONTIER_ROWS, 0.0, spread="range")
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
    segs = bars.lines[2][1].get_segments()                 # the vertical bar
    assert np.allclose([segs[0][0][1], segs[0][1][1]], [0.2, 0.8])
    with pytest.raises(ValueError, match="spread"):
        plots.method_frontier(FRONTIER_ROWS, 0.0, spread="iqr")


def test_method_frontier_se_bars_are_two_standard_errors():
    ax = plots.method_frontier(FRONTIER_ROWS, 0.0)
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
    (low, high), se = bars.lines[2][1].get_segments()[0][:, 1], np.std([0.5, 0.2, 0.8], ddof=1) / np.sqrt(3)
    assert np.allclose([low, high], [0.5 - 2 * se, 0.5 + 2 * se])


# ----- one keyword for the target: ax= (one Axes, or a sequence of them) ---------------------------

def test_every_figure_function_takes_ax_and_none_takes_axes():
    import inspect

    takes = {name: inspect.signature(getattr(plots, name)).parameters for name in plots.__all__
             if inspect.isfunction(getattr(plots, name))}
    assert all("axes" not in params for params in takes.values())
    own_figure = {"paper_figure", "pipeline_figure", "figure_labels"}   # make (or read) a whole figure
    assert sorted(name for name, params in takes.items() if "ax" not in params) == sorted(own_figure)


def test_multi_panel_figures_draw_on_the_axes_given():
    fig, (a, b) = plt.subplots(1, 2)
    assert plots.trpo_line_search({"TRPO": trpo_history(0)}, 0.01, ax=[a, b]) == (a, b)
    fig, (a, b) = plt.subplots(1, 2)
    good = one_batch([1e-3, 1e-2], outside=[0.0, 0.1])
    assert plots.ppo_one_batch(good, good, eps=0.2, ax=(a, b)) == (a, b)
    fig, grid = plt.subplots(2, 2)
    assert plots.dpo_training(dpo_updates(), ax=grid) is grid and grid[1, 1].get_ylabel() == "preference accuracy"
    fig, (a, b, c) = plt.subplots(1, 3)
    assert plots.update_curves({"a": logged(0)}, {"r_star": "r*"}, ax=c) == [c] and not a.get_lines()
    fig, ax = plt.subplots()
    assert plots.clip_plot_figure(0.2, 1.0, ax=ax) is ax and plots.method_frontier(FRONTIER_ROWS, 0.0, ax=ax) is ax


def test_method_frontier_in_panels_keeps_each_methods_colour_and_one_y_axis():
    rows = [{"method": m, "beta": b, "seed": s, "r_star": 0.1 * s + b, "kl": 1.0 + b + 0.1 * s, "seconds": 1.0}
            for m in ("PPO", "GRPO", "DPO") for b in (0.1, 0.3) for s in range(3)]
    axes = plots.method_frontier(rows, 0.0, panels={"online": ["PPO", "GRPO"], "offline": ["DPO"]})
    assert [a.get_title() for a in axes] == ["online", "offline"]
    labels = [[t.get_text() for t in a.get_legend().get_texts()] for a in axes]
    assert [sorted(x) for x in labels] == [sorted(["PPO", "GRPO", r"$\pi_{ref}$"]), sorted(["DPO", r"$\pi_{ref}$"])]
    assert axes[1].get_shared_y_axes().joined(axes[0], axes[1])
    with pytest.raises(ValueError, match="ax must hold one Axes per panel"):
        plots.method_frontier(rows, 0.0, ax=[axes[0]], panels={"a": ["PPO"], "b": ["DPO"]})
    plt.close("all")


def test_reward_kl_frontier_names_points():
    with pytest.raises(TypeError, match="points must be a sequence of .name, metrics. pairs, got NoneType"):
        plots.reward_kl_frontier(None)
    with pytest.raises(TypeError, match=r"points\[0\] must be a \(name, metrics\) pair"):
        plots.reward_kl_frontier(["SFT"])
