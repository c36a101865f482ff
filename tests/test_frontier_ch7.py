"""rlnotes.frontier, chapter 6's additions: min-max spread, the printed table, each run's budget."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from rlnotes import frontier, rlhf

TINY = {"PPO": dict(steps=2, batch_size=4, epochs=3), "DPO": dict(epochs=2, batch_size=6),
        "IPO": dict(epochs=1, batch_size=5), "RLOO": dict(steps=3, batch_size=2, k=2),
        "GRPO": dict(steps=2, batch_size=2, num_generations=3, epochs=2, minibatch_size=4)}


@pytest.fixture(scope="module")
def prepared():
    return rlhf.prepare(0, n_sft=64, sft_steps=5, n_pairs=16, n_test_pairs=8, rm_steps=2, n_eval_prompts=8)


ROWS = [{"method": "PPO", "beta": 0.1, "seed": s, "r_star": r, "kl": k, "seconds": 1.0}
        for s, (r, k) in enumerate([(0.5, 2.0), (0.2, 1.0), (0.8, 4.0)])]


def test_summarize_gives_min_and_max_over_seeds():
    (s,) = frontier.summarize(ROWS)
    assert (s["r_star_min"], s["r_star_max"], s["kl_min"], s["kl_max"]) == (0.2, 0.8, 1.0, 4.0)
    assert s["r_star"] == pytest.approx(0.5) and s["kl_std"] == pytest.approx(np.std([2, 1, 4], ddof=1))


def test_format_table_prints_mean_and_range():
    text = frontier.format_table(frontier.summarize(ROWS))
    assert text.splitlines()[1].split() == ["PPO", "0.10", "3", "+0.500", "[+0.200,", "+0.800]", "2.33",
                                            "[1.00,", "4.00]"]


def test_plot_range_bars_span_the_seeds():
    ax = frontier.plot(ROWS, 0.0, spread="range")
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
    segs = bars.lines[2][1].get_segments()                 # the vertical bar
    assert np.allclose([segs[0][0][1], segs[0][1][1]], [0.2, 0.8])
    with pytest.raises(ValueError, match="spread"):
        frontier.plot(ROWS, 0.0, spread="iqr")


def test_budget_counts_the_optimiser_steps_each_trainer_takes(prepared):
    steps = []
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    try:
        n_pairs = len(prepared.train_prefs)
        for method, settings in TINY.items():
            steps.clear()
            frontier.train_method(method, prepared, 0.1, 0, **settings)
            b = frontier.budget(method, settings, n_pairs)
            assert b["adam_steps"] == len(steps), method
    finally:
        handle.remove()
    assert frontier.budget("PPO", TINY["PPO"])["responses"] == 2 * 4
    assert frontier.budget("GRPO", TINY["GRPO"]) == {"updates": 2, "adam_steps": 2 * 2 * 2, "responses": 2 * 6,
                                                     "pairs": 0, "lr": 2e-3}
    assert frontier.budget("RLOO", TINY["RLOO"])["responses"] == 3 * 4
    assert frontier.budget("DPO", TINY["DPO"], 16) == {"updates": 2, "adam_steps": 6, "responses": 0, "pairs": 32,
                                                       "lr": 1e-3}


def test_budget_bad_input():
    with pytest.raises(ValueError, match="method"):
        frontier.budget("PPO2")
    with pytest.raises(ValueError, match="n_pairs"):
        frontier.budget("IPO", {})
    with pytest.raises(ValueError, match="steps"):
        frontier.budget("RLOO", {"steps": 0})


def test_gap_to_curve_interpolates_in_kl_and_never_extrapolates():
    table = [{"method": "A", "beta": b, "kl": kl, "r_star": r} for b, kl, r in [(1.0, 1.0, 0.2), (0.1, 3.0, 0.6)]]
    table += [{"method": "B", "beta": b, "kl": kl, "r_star": r} for b, kl, r in [(1.0, 0.5, 0.0), (0.3, 2.0, 0.3),
                                                                                 (0.1, 3.0, 0.7)]]
    gaps = frontier.gap_to_curve(table, "A", "B")
    assert [g["beta"] for g in gaps] == [0.3, 0.1]              # KL 0.5 is outside A's range [1, 3]
    assert gaps[0]["gap"] == pytest.approx(0.4 - 0.3) and gaps[1]["gap"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="reference"):
        frontier.gap_to_curve(table[:1], "A", "B")
    with pytest.raises(ValueError, match="method"):
        frontier.gap_to_curve(table, "A", "C")
