"""rlnotes.ipo: DPO's and IPO's losses on a one-token model (``fit_bandit``): IPO's bounded optimum
against DPO's. The IPO loss and IPO training (``dpo.train(loss_type="ipo")``) are tested in test_dpo.py."""

import numpy as np
import pytest
import torch

from rlnotes import ipo


def test_fit_bandit_ipo_stops_at_target_dpo_does_not():
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1])
    beta = 0.5
    h_ipo = ipo.fit_bandit("ipo", ref, [0, 0, 0], [1, 2, 3], beta, steps=1500)
    h_dpo = ipo.fit_bandit("dpo", ref, [0, 0, 0], [1, 2, 3], beta, steps=1500)
    assert h_ipo.update_array("margin")[-1] == pytest.approx(1 / (2 * beta), abs=1e-3)
    m = h_dpo.update_array("margin")
    assert m[-1] > 5 / (2 * beta) and m[-1] > m[-5] + 0.1       # still growing
    assert h_dpo.update_array("kl/exact_per_state")[-1] > 2 * h_ipo.update_array("kl/exact_per_state")[-1]
    with pytest.raises(ValueError, match="loss"):
        ipo.fit_bandit("kto", ref, [0], [1], beta)



@pytest.mark.parametrize("loss", ["ipo", "dpo"])
def test_fit_bandit_kl_is_never_negative(loss):
    # pi stays at pi_ref when each pair comes both ways; float32 [0.4, 0.3, 0.2, 0.1] sums to 1 + 2.2e-8
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1])
    h = ipo.fit_bandit(loss, ref, [0, 1], [1, 0], 0.5, steps=200, log_every=10)
    kl = h.update_array("kl/exact_per_state")
    assert (kl >= 0).all() and kl.max() < 1e-12
    g = np.random.default_rng(0)
    for _ in range(10):
        probs = g.dirichlet(np.ones(5))
        h = ipo.fit_bandit(loss, probs, g.integers(0, 5, 3), g.integers(0, 5, 3), 0.5, steps=100, log_every=5)
        assert (h.update_array("kl/exact_per_state") >= 0).all()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ref_probs=[0.5, 0.6]), ValueError,
     r"ref_probs must be a distribution .* \(summing to 1 within 1e-06\), got \[0.5 0.6\]"),
    (dict(ref_probs=[0.5, float("nan")]), ValueError, "ref_probs must be a distribution"),
    (dict(winners=[0, 2]), ValueError, r"winners and losers must be tokens in \[0, 1\]"),
    (dict(winners=[True, False]), ValueError, "winners and losers must be non-empty 1-D integer arrays"),
    (dict(winners=[], losers=[]), ValueError, "winners and losers must be non-empty"),
])
def test_fit_bandit_refuses_bad_probabilities_and_tokens(kwargs, error, match):
    args = dict(ref_probs=[0.5, 0.5], winners=[0, 1], losers=[1, 0], beta=0.5, steps=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ipo.fit_bandit("ipo", args.pop("ref_probs"), args.pop("winners"), args.pop("losers"), args.pop("beta"), **args)


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_fit_bandit_refuses_steps_above_max_steps():
    with pytest.raises(ValueError, match=r"steps must be <= MAX_BANDIT_STEPS \(20000\), got 1000000000"):
        ipo.fit_bandit("ipo", [0.5, 0.5], [0], [1], 0.5, steps=10**9)
