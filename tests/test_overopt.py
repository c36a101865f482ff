import numpy as np
import pytest

from rlnotes import bestofn, overopt, reward


def test_proxy_docks_unfinished_responses():
    r = np.array([[0.5, -1.0], [2.0, 0.0]])
    finished = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(overopt.proxy(r, finished, penalty=2.0), [[0.5, -3.0], [0.0, 0.0]])
    np.testing.assert_array_equal(overopt.proxy(r, finished, penalty=0.0), r)


@pytest.mark.parametrize("call, error, words", [
    (lambda: overopt.proxy([1.0], [True], penalty=-1), ValueError, "penalty must be in [0.0, inf]"),
    (lambda: overopt.proxy([1.0, 2.0], [True], penalty=1), ValueError, "r_phi and finished must have one shape"),
])
def test_proxy_refuses_bad_input(call, error, words):
    with pytest.raises(error, match=None) as info:
        call()
    assert words in str(info.value)


def test_bon_runs_reads_every_n_off_one_pool_per_seed(tiny_prepared):
    P = tiny_prepared
    prompts = P.eval_prompts[:3]
    out = overopt.bon_runs(P, prompts, 8, [1, 2, 8], [0, 1], workers=1)
    assert out["r_phi"]["r_star"].shape == (2, 3) and out["control"].shape == (2, 3)
    np.testing.assert_allclose(out["kl"], [bestofn.bon_kl(n) for n in (1, 2, 8)])
    # the same seed's pool, read by hand: n = 1 is pi_ref's mean, n = N the argmax of the proxy
    pool = bestofn.sample_pool(P.sft, P, prompts, 8, seed=1)
    score = overopt.proxy(pool["r_phi"], pool["finished"])
    assert out["r_phi"]["r_star"][1, 0] == pytest.approx(pool["r_star"].mean())
    best = pool["r_star"][np.arange(3), score.argmax(1)].mean()
    assert out["r_phi"]["r_star"][1, 2] == pytest.approx(best)
    assert out["r_phi"]["proxy"][1, 2] == pytest.approx(score.max(1).mean())
    # the control picks by r* itself: never below the proxy's choice in r*
    assert (out["control"] >= out["r_phi"]["r_star"] - 1e-9).all()
    assert out["r_phi"]["kl_mc"][:, 0] == pytest.approx(0.0)


def test_bon_runs_scores_each_seed_with_its_own_reward_models(tiny_prepared):
    P = tiny_prepared
    rms = {0: {"same": P.reward_model}, 1: {"same": P.reward_model}}
    out = overopt.bon_runs(P, P.eval_prompts[:2], 4, [1, 4], [0, 1], reward_models=rms, workers=1)
    np.testing.assert_allclose(out["same"]["r_star"], out["r_phi"]["r_star"])
    with pytest.raises(ValueError, match="reward_models must map each seed"):
        overopt.bon_runs(P, P.eval_prompts[:2], 4, [1], [0, 1], reward_models={0: {}}, workers=1)
    with pytest.raises(ValueError, match=r"ns must be a non-empty list of sample counts <= N \(4\)"):
        overopt.bon_runs(P, P.eval_prompts[:2], 4, [8], [0], workers=1)
    with pytest.raises(ValueError, match="seeds must be 1 to 100 distinct"):
        overopt.bon_runs(P, P.eval_prompts[:2], 4, [1], [0, 0], workers=1)


def test_rl_runs_logs_the_proxy_the_policy_climbs(tiny_prepared):
    P = tiny_prepared
    out = overopt.rl_runs(P, [0, 1], workers=1, beta=0.0, steps=2, batch_size=4, missing_eos_penalty=3.0)
    assert out["r_star"].shape == (2, 2)
    np.testing.assert_allclose(out["proxy"], out["r_phi"] - 3.0 * out["unfinished"])
    np.testing.assert_allclose(out["d"] ** 2, np.maximum(out["kl"], 0))


def test_reward_models_fit_nested_subsets(tiny_prepared):
    P = tiny_prepared
    rms = overopt.reward_models(P, [4, 8], [0], workers=1, steps=2)
    assert list(rms) == [0] and list(rms[0]) == ["4 pairs", "8 pairs"]
    acc = overopt.test_accuracy(P, rms[0]["8 pairs"])
    t = P.test_prefs
    score = lambda ys: rms[0]["8 pairs"].score(P.tokenizer, list(t.prompts), list(ys))  # noqa: E731
    assert acc == reward.preference_accuracy(score(t.chosen), score(t.rejected)) and 0 <= acc <= 1
    with pytest.raises(ValueError, match="sizes must be 1 to"):
        overopt.reward_models(P, [10**6], [0], workers=1)
