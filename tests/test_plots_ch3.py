"""rlnotes.plots, chapter 3's figures: ppo_one_batch and passes_per_update."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from rlnotes import plots
from rlnotes.trainer import History


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


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
