"""rlnotes.frontier: the sweep over methods, betas and seeds; its summary (mean, standard error and
min-max over seeds) and the printed table; each run's budget; the gap between two curves;
the runs in one process or in workers, evaluated at the end or after each epoch."""

import matplotlib

matplotlib.use("Agg")

import dataclasses

import numpy as np
import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from rlnotes import frontier, measure, plots

# one update (or one epoch) of each method: the sweep's tests
ONE_UPDATE = {"PPO": dict(steps=1, batch_size=4, epochs=1), "DPO": dict(epochs=1, batch_size=8),
              "IPO": dict(epochs=1, batch_size=8), "RLOO": dict(steps=1, batch_size=2, num_generations=2),
              "GRPO": dict(steps=1, batch_size=2, num_generations=2)}
# a few updates, epochs and minibatches of each: the tests of the budget and of train_runs
TINY = {"PPO": dict(steps=2, batch_size=4, epochs=3), "DPO": dict(epochs=2, batch_size=6),
        "IPO": dict(epochs=1, batch_size=5), "RLOO": dict(steps=3, batch_size=2, num_generations=2),
        "GRPO": dict(steps=2, batch_size=2, num_generations=3, epochs=2, minibatch_size=4)}


@pytest.fixture(scope="module")
def prepared(prepared_sft5):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft5``)."""
    return prepared_sft5


# ----- sweep, summarize, plot ---------------------------------------------------------------------

def test_sweep_summarize_plot(prepared):
    rows = frontier.sweep(prepared, {m: [0.5] for m in frontier.METHODS}, seeds=[0, 1], settings=ONE_UPDATE)
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
    ax = plots.method_frontier(rows, 0.0)
    assert len(ax.get_legend().get_texts()) == 6          # five methods and pi_ref


def test_true_reward_replaces_the_reward_model(prepared):
    P = frontier.with_true_reward(prepared)
    assert P.sft is prepared.sft and P.reward_model is not prepared.reward_model
    m = measure.evaluate(P.sft, P)
    assert m["r_phi"] == pytest.approx(m["r_star"])        # the "reward model" is r* itself


def test_bad_method(prepared):
    with pytest.raises(ValueError, match="method"):
        frontier.train_method("PPO2", prepared, 0.1, 0)


# ----- the spread over seeds, the table, the budget, the gap, the runs ------------------------------

ROWS = [{"method": "PPO", "beta": 0.1, "seed": s, "r_star": r, "kl": k, "seconds": 1.0}
        for s, (r, k) in enumerate([(0.5, 2.0), (0.2, 1.0), (0.8, 4.0)])]


def test_summarize_gives_min_and_max_over_seeds():
    (s,) = frontier.summarize(ROWS)
    assert (s["r_star_min"], s["r_star_max"], s["kl_min"], s["kl_max"]) == (0.2, 0.8, 1.0, 4.0)
    assert s["r_star"] == pytest.approx(0.5) and s["kl_std"] == pytest.approx(np.std([2, 1, 4], ddof=1))


def test_summarize_gives_the_standard_error_over_seeds():
    (s,) = frontier.summarize(ROWS)
    assert s["r_star_se"] == pytest.approx(np.std([0.5, 0.2, 0.8], ddof=1) / np.sqrt(3))
    assert s["kl_se"] == pytest.approx(np.std([2, 1, 4], ddof=1) / np.sqrt(3))
    assert np.isnan(s["eval_se"])                                   # the rows carry no r*/se
    (one,) = frontier.summarize([{**ROWS[0], "r_star/se": 0.06}])
    assert np.isnan(one["r_star_se"]) and one["eval_se"] == 0.06     # one seed: no spread to measure


def test_format_table_prints_mean_se_and_range():
    text = frontier.format_table(frontier.summarize([{**r, "r_star/se": 0.05} for r in ROWS]))
    assert text.splitlines()[1].split() == ["PPO", "0.10", "3", "+0.500", "+-", "0.173", "[+0.200,", "+0.800]",
                                            "2.33", "+-", "0.88", "[1.00,", "4.00]", "0.050"]


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


def test_train_runs_same_numbers_in_one_process_or_two(prepared):
    runs = [{"method": m, "beta": 0.5, "seed": s, "settings": TINY[m]} for m in ("GRPO", "IPO") for s in (0, 1)]
    one = frontier.train_runs(prepared, runs, workers=1)
    with frontier.Workers(prepared, 2) as started:                 # two processes, kept for several calls
        two = frontier.train_runs(prepared, runs, workers=started)
        again = frontier.train_runs(prepared, runs[1:2], workers=started)
        with pytest.raises(ValueError, match="another prepared"):
            frontier.train_runs(dataclasses.replace(prepared), runs, workers=started)
    assert again[0]["r_star"] == one[1]["r_star"] and again[0]["kl"] == one[1]["kl"]
    for a, b in zip(one, two):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert (a["r_star"], a["r_star/se"], a["kl"], a["kl/se"]) == (b["r_star"], b["r_star/se"], b["kl"], b["kl/se"])
        assert a["history"].updates["loss"] == b["history"].updates["loss"]
    assert one[0]["r_star/se"] > 0 and one[0]["kl"] > 0


def test_train_runs_per_epoch_evaluates_before_and_after_each_epoch(prepared):
    runs = [{"method": m, "beta": 0.5, "seed": 0, "settings": TINY[m], "per_epoch": p}
            for m in ("DPO", "IPO") for p in (False, True)]
    runs.append({"method": "DPO", "beta": 0.5, "seed": 0, "per_epoch": True,   # batches of 64: one step an epoch
                 "settings": {"epochs": 2, "eval_data": prepared.test_prefs.encode(prepared.tokenizer)}})
    dpo_plain, dpo_epochs, ipo_plain, ipo_epochs, dpo_eval = frontier.train_runs(prepared, runs, workers=1)
    assert dpo_eval["history"].update_array("eval/step").tolist() == [0, 1, 2]
    assert len(dpo_eval["history"].update_array("eval/loss")) == 3
    for plain, epochs, n in ((dpo_plain, dpo_epochs, 2), (ipo_plain, ipo_epochs, 1)):
        r, kl = epochs["history"].update_array("eval/r_star"), epochs["history"].update_array("eval/kl")
        assert len(r) == len(kl) == n + 1 and kl[0] == 0.0               # pi_ref itself, then each epoch
        assert (r[-1], kl[-1]) == (epochs["r_star"], epochs["kl"])
        assert (plain["r_star"], plain["kl"]) == (epochs["r_star"], epochs["kl"])  # evaluating does not perturb training
        assert plain["history"].updates["loss"] == epochs["history"].updates["loss"]
    stacked = frontier.per_epoch([dpo_epochs, ipo_epochs, dpo_eval], "kl")
    assert stacked["DPO"].shape == (2, 3) and stacked["IPO"].shape == (1, 2)
    assert stacked["DPO"][1].tolist() == dpo_eval["history"].update_array("eval/kl").tolist()
    with pytest.raises(ValueError, match="per_epoch"):
        frontier.per_epoch([dpo_plain], "kl")
    rows = frontier.epoch_rows([dpo_epochs, ipo_epochs], 1)
    assert [(r["method"], r["seed"]) for r in rows] == [("DPO", 0), ("IPO", 0)]
    assert rows[1]["r_star"] == ipo_plain["r_star"] and rows[1]["kl/se"] == ipo_plain["kl/se"]  # IPO: one epoch
    assert rows[0]["kl"] == stacked["DPO"][0, 1]
    with pytest.raises(ValueError, match="epoch"):
        frontier.epoch_rows([ipo_epochs], 2)


def test_train_runs_bad_input(prepared):
    with pytest.raises(ValueError, match="seed"):
        frontier.train_runs(prepared, [{"method": "PPO", "beta": 0.1}])
    with pytest.raises(ValueError, match="callback"):
        frontier.train_runs(prepared, [{"method": "RLOO", "beta": 0.1, "seed": 0, "per_epoch": True,
                                        "settings": TINY["RLOO"]}], workers=1)
    with pytest.raises(ValueError, match="n_repeats"):
        frontier.train_runs(prepared, [], n_repeats=0)


def test_budget_refuses_a_bool_n_pairs_and_takes_numpy_and_whole_float_counts():
    with pytest.raises(TypeError, match="n_pairs must be an integer, got True"):
        frontier.budget("DPO", n_pairs=True)
    with pytest.raises(ValueError, match="n_pairs must be >= 1, got 0"):
        frontier.budget("DPO", n_pairs=0)
    want = frontier.budget("DPO", n_pairs=100)
    assert frontier.budget("DPO", n_pairs=np.int64(100)) == want
    assert frontier.budget("DPO", n_pairs=100.0) == want
    assert frontier.budget("IPO", n_pairs=np.int64(5))["pairs"] == frontier.budget("IPO", n_pairs=5)["pairs"]


def test_entry_points_name_bad_input(tiny_prepared):
    with pytest.raises(TypeError, match="prepared must be a Prepared .* got NoneType"):
        frontier.with_true_reward(None)
    with pytest.raises(TypeError, match="prepared must be a Prepared .* got NoneType"):
        frontier.Workers(None)
    with pytest.raises(ValueError, match=r"rows\[0\] must be a dict with .* lacks \['r_star', 'kl'\]"):
        frontier.summarize([{"method": "A", "beta": 0.1}])
    with pytest.raises(TypeError, match=r"betas\['DPO'\] must be a list of betas, got float 0.1"):
        frontier.sweep(tiny_prepared, {"DPO": 0.1}, [0], workers=1)
    with pytest.raises(TypeError, match="seeds must be a list of seeds, got int 0"):
        frontier.sweep(tiny_prepared, {"DPO": [0.1]}, 0, workers=1)
