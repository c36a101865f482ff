"""rlnotes.frontier: the sweep over methods, betas and seeds, its summary and its plot."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from rlnotes import frontier, rlhf

TINY = {"PPO": dict(steps=1, batch_size=4, epochs=1), "DPO": dict(epochs=1, batch_size=8),
        "IPO": dict(epochs=1, batch_size=8), "RLOO": dict(steps=1, batch_size=2, k=2),
        "GRPO": dict(steps=1, batch_size=2, num_generations=2)}


@pytest.fixture(scope="module")
def prepared():
    return rlhf.prepare(0, n_sft=64, sft_steps=5, n_pairs=16, n_test_pairs=8, rm_steps=2, n_eval_prompts=8)


def test_sweep_summarize_plot(prepared):
    rows = frontier.sweep(prepared, {m: [0.5] for m in frontier.METHODS}, seeds=[0, 1], settings=TINY)
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in frontier.METHODS for s in (0, 1)]
    assert all(np.isfinite(r["r_star"]) and r["kl"] >= 0 for r in rows)
    # every method moved the policy away from pi_ref
    assert all(r["kl"] > 0 for r in rows)
    table = frontier.summarize(rows)
    assert len(table) == 5
    for s in table:
        runs = [r for r in rows if r["method"] == s["method"]]
        assert s["n"] == 2 and s["beta"] == 0.5
        assert s["r_star"] == pytest.approx(np.mean([r["r_star"] for r in runs]))
        assert s["kl_std"] == pytest.approx(np.std([r["kl"] for r in runs], ddof=1))
    ax = frontier.plot(rows, 0.0)
    assert len(ax.get_legend().get_texts()) == 6          # five methods and pi_ref


def test_true_reward_replaces_the_reward_model(prepared):
    P = frontier.with_true_reward(prepared)
    assert P.sft is prepared.sft and P.reward_model is not prepared.reward_model
    m = rlhf.evaluate(P.sft, P)
    assert m["r_phi"] == pytest.approx(m["r_star"])        # the "reward model" is r* itself


def test_bad_method(prepared):
    with pytest.raises(ValueError, match="method"):
        frontier.train_method("PPO2", prepared, 0.1, 0)
