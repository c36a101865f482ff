"""rlnotes.exercises: check() passes rlnotes' own functions and the book's solutions, and names the
first case that a wrong version fails."""

import math

import pytest
import torch

from rlnotes import exercises
from rlnotes.exercises import check


@pytest.mark.parametrize("exercise", sorted(exercises.REFERENCES))
def test_rlnotes_own_function_passes_its_exercise(exercise):
    ref, pick = exercises.reference(exercise), exercises.REFERENCES[exercise][1]
    report = check(lambda **args: pick(ref(**args)), exercise)
    assert report.passed and report.cases >= 4, report.message
    assert repr(report) == f"{exercise}: all {report.cases} cases agree with rlnotes' {exercises.REFERENCES[exercise][0]}"


def test_a_stub_is_reported_as_not_written_yet():
    def gae(rewards, values, dones, last_value, gamma, lam):
        raise NotImplementedError
    report = check(gae, "gae")
    assert not report.passed and report.message == "gae: not written yet (the stub raises NotImplementedError)"


def naive_gae(rewards, values, dones, last_value, gamma, lam):
    """GAE that forgets to cut the recursion at a done."""
    adv, last = torch.zeros_like(rewards), torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        nxt = values[t + 1] if t + 1 < len(rewards) else last_value
        delta = rewards[t] + gamma * nxt - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values


def test_a_wrong_gae_fails_on_the_first_case_with_a_done_and_says_where():
    report = check(naive_gae, "gae")
    assert not report.passed
    assert report.message.startswith("gae: case 2 of 20 (T=6, N=3, ")
    assert "item 0 of the result differs at index (" in report.message and "yours" in report.message


def test_a_naive_log_sigmoid_fails_on_the_huge_margins():
    def bt(r_chosen, r_rejected):
        return -torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()
    report = check(bt, "reward_loss")
    assert not report.passed and "case 4 of 4 (8 pairs, rewards of scale 200.0)" in report.message


def test_wrong_shapes_types_and_errors_are_named():
    report = check(lambda ratio, advantages, eps: (ratio * advantages).mean(), "clipped_surrogate")
    assert report.message.endswith("the result has shape (), rlnotes' has (32,)")
    report = check(lambda **kw: "no", "group_advantages")
    assert "the result must be a tensor or a number, got str" in report.message
    report = check(lambda **kw: 1 / 0, "dpo_loss")
    assert report.message == ("dpo_loss: case 1 of 4 (1 pairs, log-probs spread over 1.0 nats, beta=0.1) raised "
                              "ZeroDivisionError: division by zero")
    report = check(lambda **kw: (kw["full_step"], 0), "line_search")     # never backtracks
    assert report.message.startswith("line_search: case 2 of 5 (3 parameters, delta=0.01, full step 1.0 x the "
                                     "gradient): item 0 of the result differs at index (0,)")


def test_check_refuses_what_is_not_a_function_or_an_exercise():
    with pytest.raises(TypeError, match="fn must be the function you wrote, got int"):
        check(3, "gae")
    with pytest.raises(ValueError, match=r"exercise must be one of \('gae', "):
        check(naive_gae, "GAE")
    assert check(exercises.reference("gae"), "gae", n_cases=2).cases == 2


def test_the_cases_are_the_same_for_every_reader():
    a = [d for d, _ in exercises.gae_cases(torch.Generator().manual_seed(0))]
    b = [d for d, _ in exercises.gae_cases(torch.Generator().manual_seed(0))]
    assert a == b and len(a) == 20
    assert math.isclose(sum(1 for d in a if "0 dones" in d) / len(a), 0.5, abs_tol=0.3)


def test_check_reports_a_tuple_as_a_tuple():
    from rlnotes import dpo
    report = check(dpo.dpo_loss, "dpo_loss")      # returns (losses, chosen, rejected); the exercise: losses
    assert not report.passed
    assert "the result is a tuple of 3, rlnotes' is a tensor of shape (1,)" in report.message


def test_a_best_of_n_that_ignores_ties_fails_on_the_tied_case():
    import numpy as np

    def no_ties(ref_probs, rewards, n):
        order = np.argsort(rewards)
        F = np.cumsum(ref_probs[order])
        below = np.concatenate([[0.0], F[:-1]])
        out = np.empty_like(ref_probs)
        out[order] = F ** n - below ** n        # ties broken by position: not pi_ref's proportions
        return out

    report = check(no_ties, "bon_distribution")
    assert not report.passed and "case 4 of 4 (M=6 responses, n=16, responses 0, 1 and 4 tied)" in report.message
