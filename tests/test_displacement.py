"""rlnotes.displacement: the response sets of the training pairs, where the policy's probability goes
(``mass``, checked against sequence log-probabilities), and one measured run per method on a tiny model."""

import math

import pytest

from rlnotes import displacement as D
from rlnotes import lm, pairs
from rlnotes.reward import Preferences


def test_response_sets_partition_each_prompts_responses():
    prefs = Preferences(["a", "a", "a", "b"], ["x", "y", "z", "x"], ["y", "w", "x", "v"], [1.0] * 4, [0.0] * 4)
    sets = D.response_sets(prefs)
    assert sets["a"] == {"chosen": ["z"], "rejected": ["w"], "both": ["x", "y"]}
    assert sets["b"] == {"chosen": ["x"], "rejected": ["v"], "both": []}
    with pytest.raises(TypeError, match="prefs"):
        D.response_sets({"a": 1})


def test_mass_adds_up_the_sequence_probabilities(tiny_prepared):
    P = tiny_prepared
    m = D.mass(P.sft, P.train_prefs, P.tokenizer)
    assert set(m) == set(D.MASS_KEYS) and math.isclose(sum(m.values()), 1.0)
    assert all(0 <= m[k] <= 1 for k in D.MASS_KEYS) and m["chosen"] > 0
    sets = D.response_sets(P.train_prefs)     # by hand: the mean over prompts of sum_y pi(y|x)
    totals = []
    for x, s in sets.items():
        p, pm = lm.encode_prompts(P.tokenizer, [x] * len(s["chosen"]))
        y, ym = lm.encode_responses(P.tokenizer, s["chosen"])
        totals.append(lm.sequence_logprob(P.sft, p, pm, y, ym).double().exp().sum().item() if s["chosen"] else 0.0)
    assert m["chosen"] == pytest.approx(sum(totals) / len(totals), rel=1e-5)
    logps = pairs.reference_logps(P.sft, P.train_prefs.encode(P.tokenizer))
    assert D.mass(P.sft, P.train_prefs, P.tokenizer, logps=logps) == m
    with pytest.raises(ValueError, match="ref_logps must have shape|shape"):
        D.mass(P.sft, P.train_prefs, P.tokenizer, logps=(logps[0][:3], logps[1][:3]))
    with pytest.raises(TypeError, match="policy"):
        D.mass("sft", P.train_prefs, P.tokenizer)


@pytest.mark.parametrize("method", D.METHODS)
def test_run_point_measures_each_method_the_same_way(tiny_prepared, method):
    P = tiny_prepared
    sft_mass = D.mass(P.sft, P.train_prefs, P.tokenizer)
    before = [p.requires_grad for p in P.sft.parameters()]
    out = D.run_point(P, method, 0, every=1 if method != "KTO" else None, batch_size=16, lr=1e-2)
    ev = out["eval"]
    assert set(D.EVAL_KEYS) <= set(ev) and {f"mass/{k}" for k in D.MASS_KEYS} <= set(ev)
    assert ev["mass/chosen"] != sft_mass["chosen"] and ev["logps/chosen"] < 0
    if method != "KTO":
        evals = out["history"].evals
        assert evals["eval/mass/chosen"][0] == pytest.approx(sft_mass["chosen"])   # step 0: pi = pi_ref
        assert len(evals["eval/step"]) == 3                                        # steps 0, 1, 2
    assert [p.requires_grad for p in P.sft.parameters()] == before
    again = D.run_point(P, method, 0, every=1 if method != "KTO" else None, batch_size=16, lr=1e-2)
    assert again["eval"] == ev


def test_run_point_and_run_points_refusals(tiny_prepared):
    with pytest.raises(ValueError, match="method"):
        D.run_point(tiny_prepared, "ORPO")
    with pytest.raises(ValueError, match="beta"):
        D.run_point(tiny_prepared, "DPO", beta=0)
    with pytest.raises(TypeError, match="points"):
        D.run_points(tiny_prepared, {"method": "DPO"})
    with pytest.raises(TypeError, match="points\\[0\\]"):
        D.run_points(tiny_prepared, [{"seed": 0}])


def test_by_method_groups_the_runs():
    points = [{"method": "DPO"}, {"method": "IPO"}, {"method": "DPO"}]
    results = [{"eval": {"r_star": v}} for v in (1.0, 2.0, 3.0)]
    got = D.by_method(points, results, "r_star")
    assert got["DPO"].tolist() == [1.0, 3.0] and got["IPO"].tolist() == [2.0]
    with pytest.raises(KeyError, match="r_phi"):
        D.by_method(points, results, "r_phi")
    with pytest.raises(ValueError, match="one length"):
        D.by_method(points, results[:2], "r_star")
