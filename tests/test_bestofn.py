"""rlnotes.bestofn: the best-of-n KL (closed form, exact, enumerated), best-of-n on the toy task, Gao et al.'s fits."""

import itertools
import math

import numpy as np
import pytest

from rlnotes import bestofn

# ------------------------------------------------------------------ closed forms

def test_bon_kl_closed_form():
    assert bestofn.bon_kl(1) == 0.0
    assert bestofn.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bestofn.bon_kl(256) == pytest.approx(math.log(256) - 255 / 256)
    ks = [bestofn.bon_kl(n) for n in (1, 2, 4, 8, 16)]
    assert all(b > a for a, b in itertools.pairwise(ks))


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "4", None])
def test_bon_kl_refuses_bad_n(bad):
    with pytest.raises((TypeError, ValueError), match="n"):
        bestofn.bon_kl(bad)


def _enumerate(p, r, n):
    """The law of argmax (first on a tie) of n iid draws from p, by summing over all len(p)**n tuples."""
    q = np.zeros(len(p))
    for draw in itertools.product(range(len(p)), repeat=n):
        prob = np.prod([p[i] for i in draw])
        q[draw[int(np.argmax([r[i] for i in draw]))]] += prob
    return q


@pytest.mark.parametrize("rewards", [[0.3, -1.0, 2.0, 0.5], [1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_bon_distribution_matches_enumeration(rewards, n):
    p = np.array([0.1, 0.4, 0.2, 0.3])
    q = bestofn.bon_distribution(p, rewards, n)
    np.testing.assert_allclose(q, _enumerate(p, rewards, n), atol=1e-12)
    assert q.sum() == pytest.approx(1.0)
    kl = np.sum(q * np.log(q / p))
    assert bestofn.exact_bon_kl(p, rewards, n) == pytest.approx(max(kl, 0.0), abs=1e-12)


def test_bon_distribution_n1_is_ref_and_zero_probability_stays_zero():
    p = np.array([0.5, 0.0, 0.5])
    np.testing.assert_allclose(bestofn.bon_distribution(p, [1.0, 3.0, 2.0], 1), p)
    q = bestofn.bon_distribution(p, [1.0, 3.0, 2.0], 4)
    assert q[1] == 0.0 and q[2] == pytest.approx(1 - 0.5 ** 4)


def test_exact_kl_below_closed_form_and_approaches_it():
    rng = np.random.default_rng(0)
    for _ in range(20):  # an upper bound for discrete outputs (Beirami et al. 2024)
        p = rng.dirichlet(np.ones(6))
        r = rng.normal(size=6)
        n = int(rng.integers(1, 40))
        assert bestofn.exact_bon_kl(p, r, n) <= bestofn.bon_kl(n) + 1e-12
    M = 200_000  # many responses of small probability: the closed form
    p, r = np.full(M, 1 / M), rng.permutation(M).astype(float)
    for n in (2, 16, 256):
        assert bestofn.exact_bon_kl(p, r, n) == pytest.approx(bestofn.bon_kl(n), rel=2e-3)
    assert bestofn.exact_bon_kl([1.0], [0.0], 5) == 0.0  # one response: nothing to choose


def test_bon_distribution_refuses_bad_input():
    with pytest.raises(ValueError, match="ref_probs"):
        bestofn.bon_distribution([0.5, 0.6], [0, 1], 2)
    with pytest.raises(ValueError, match="ref_probs and rewards"):
        bestofn.bon_distribution([0.5, 0.5], [0, 1, 2], 2)
    with pytest.raises(ValueError, match="rewards"):
        bestofn.bon_distribution([0.5, 0.5], [0, np.nan], 2)
    with pytest.raises(ValueError, match="n"):
        bestofn.exact_bon_kl([0.5, 0.5], [0, 1], 0)


# ------------------------------------------------------------------ pools of samples

def test_bon_weights_and_curve_match_all_subsets():
    rng = np.random.default_rng(1)
    score, value = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in range(1, 8):
        w = bestofn.bon_weights(7, n)
        assert w.sum() == pytest.approx(1.0) and (w[:n - 1] == 0).all()
        brute = np.mean([np.mean([v[list(c)][np.argmax(s[list(c)])] for c in itertools.combinations(range(7), n)])
                         for s, v in zip(score, value)])
        assert bestofn.bon_curve(score, value, [n])[0] == pytest.approx(brute)
    with pytest.raises(ValueError, match="n must be <= N"):
        bestofn.bon_weights(4, 5)
    with pytest.raises(ValueError, match="score and value"):
        bestofn.bon_curve(score, value[:, :3], [1])


def test_empirical_kl_approaches_closed_form():
    score = np.random.default_rng(2).normal(size=(4, 20_000))
    for n in (1, 4, 32):
        assert bestofn.empirical_bon_kl(score, n) == pytest.approx(bestofn.bon_kl(n), abs=5e-3)
    with pytest.raises(ValueError, match="score"):
        bestofn.empirical_bon_kl(score[0], 2)


def test_best_of_n_on_the_toy_task(tiny_prepared):
    P = tiny_prepared
    prompts = P.eval_prompts[:3]
    out = bestofn.best_of_n(P.sft, P, prompts, 4, seed=1)
    pool = out["pool"]
    assert pool["r_phi"].shape == pool["r_star"].shape == pool["finished"].shape == (3, 4)
    assert pool["finished"].dtype == bool and len(out["responses"]) == 3
    np.testing.assert_array_equal(out["r_phi"], pool["r_phi"].max(axis=1))
    again = bestofn.best_of_n(P.sft, P, prompts, 4, "r_star", seed=1)  # same seed: the same pool
    np.testing.assert_array_equal(again["pool"]["r_phi"], pool["r_phi"])
    np.testing.assert_array_equal(again["r_star"], pool["r_star"].max(axis=1))
    rows = np.arange(3)
    np.testing.assert_array_equal(out["r_star"], pool["r_star"][rows, out["index"]])
    assert [pool["responses"][i][j] for i, j in zip(rows, out["index"])] == out["responses"]
    shortest = bestofn.best_of_n(P.sft, P, prompts, 4, lambda xs, ys: [-len(y.split()) for y in ys], seed=1)
    assert all(len(y.split()) == min(len(z.split()) for z in row)
               for y, row in zip(shortest["responses"], pool["responses"]))
    twice = bestofn.sample_pool(P.sft, P, prompts, 4, seed=1, reward_models={"again": P.reward_model})
    np.testing.assert_array_equal(twice["again"], pool["r_phi"])
    with pytest.raises(ValueError, match="reward_fn"):
        bestofn.best_of_n(P.sft, P, prompts, 2, "r_true")
    with pytest.raises(TypeError, match="reward_fn"):
        bestofn.best_of_n(P.sft, P, prompts, 2, 3.0)
    with pytest.raises(ValueError, match="reward_fn"):
        bestofn.best_of_n(P.sft, P, prompts, 2, lambda xs, ys: [0.0])
    with pytest.raises(TypeError, match="prepared"):
        bestofn.sample_pool(P.sft, None, prompts, 2)


# ------------------------------------------------------------------ Gao et al.'s forms

def _runs(form, alpha, beta, seeds=5, noise=0.02):
    rng = np.random.default_rng(3)
    d = np.tile(np.linspace(0.2, 4.0, 12), (seeds, 1)) + rng.uniform(0, 0.05, size=(seeds, 12))
    return d, form(d, alpha, beta) + noise * rng.normal(size=d.shape)


@pytest.mark.parametrize("kind", ["bon", "rl"])
def test_fits_recover_known_coefficients(kind):
    form, fit = (bestofn.bon_form, bestofn.fit_bon) if kind == "bon" else (bestofn.rl_form, bestofn.fit_rl)
    d, r = _runs(form, 1.2, 0.3)
    out = fit(d, r, reps=500)
    assert out["alpha"] == pytest.approx(1.2, abs=0.03) and out["beta"] == pytest.approx(0.3, abs=0.03)
    for name in ("alpha", "beta"):
        low, high = out[name + "_ci"]
        assert low <= out[name] <= high and high - low < 0.1
    peak = 1.2 / 0.6 if kind == "bon" else math.exp(1.2 / 0.3 - 1)
    assert out["d_peak"] == pytest.approx(peak, rel=0.15) and out["rmse"] < 0.03
    assert out["d_peak_ci"][0] <= out["d_peak"] <= out["d_peak_ci"][1]
    one = fit(d[0], r[0])  # one run: no interval
    assert "alpha_ci" not in one and one["n_seeds"] == 1


def test_forms_and_peaks():
    assert bestofn.bon_form(0.0, 1, 1) == 0.0 and bestofn.rl_form(0.0, 1, 1) == 0.0
    d = np.linspace(0.01, 10, 100_001)
    assert d[np.argmax(bestofn.bon_form(d, 1.0, 0.25))] == pytest.approx(2.0, abs=1e-3)
    assert d[np.argmax(bestofn.rl_form(d, 1.0, 0.5))] == pytest.approx(math.e, abs=1e-3)
    d = np.tile([0.5, 1.0, 2.0, 3.0], (4, 1))
    rising = bestofn.fit_bon(d, d + 0.1 * d ** 2, reps=200)  # convex: no peak, on every resample
    assert rising["beta"] < 0 and rising["d_peak"] == math.inf and rising["d_peak_ci"] == (math.inf, math.inf)


def test_bin_means():
    d = np.array([[0.1, 0.6, 0.7, 2.5], [0.2, 0.3, 1.5, 1.6]])
    r = np.array([[1.0, 2.0, 4.0, 9.0], [5.0, 7.0, 1.0, 3.0]])
    out = bestofn.bin_means(d, r, [0, 0.5, 1, 2])
    np.testing.assert_array_equal(out, [[1.0, 3.0, np.nan], [6.0, np.nan, 2.0]])
    with pytest.raises(ValueError, match="edges"):
        bestofn.bin_means(d, r, [1.0, 0.5])


@pytest.mark.parametrize("fit", [bestofn.fit_bon, bestofn.fit_rl])
def test_fits_refuse_bad_input(fit):
    with pytest.raises(ValueError, match="d and r"):
        fit([[1.0, 2.0, 3.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="d must be finite and >= 0"):
        fit([-1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 3 points"):
        fit([1.0, 2.0], [1.0, 2.0])


# ------------------------------------------------------------------ bad input, round two (issue 27)

def test_bon_curve_refuses_non_finite_scores_and_an_int_ns():
    with pytest.raises(ValueError, match=r"score must be finite \(it holds NaN or inf\)"):
        bestofn.bon_curve([[math.nan, 2.0]], [[1.0, 2.0]], [1, 2])
    with pytest.raises(ValueError, match=r"value must be finite \(it holds NaN or inf\)"):
        bestofn.bon_curve([[1.0, 2.0]], [[math.inf, 2.0]], [1, 2])
    with pytest.raises(TypeError, match="ns must be a list of sample counts n, got int 2"):
        bestofn.bon_curve([[1.0, 2.0]], [[1.0, 2.0]], 2)


@pytest.mark.parametrize("form", [bestofn.bon_form, bestofn.rl_form])
def test_forms_refuse_a_negative_d(form):
    with pytest.raises(ValueError, match=r"d must be finite and >= 0 \(d = sqrt\(KL\)\), got -1.0"):
        form([-1.0], 1.0, 0.5)


def test_fit_checks_level_and_reps_with_one_seed():
    d, r = [[0.1, 0.2, 0.3]], [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match=r"level must be in \[0.5, 0.999\], got 1.5"):
        bestofn.fit_bon(d, r, level=1.5)
    with pytest.raises(ValueError, match="reps must be >= 100, got 0"):
        bestofn.fit_rl(d, r, reps=0)


def test_exact_bon_kl_names_strings():
    with pytest.raises(TypeError, match=r"ref_probs must hold numbers, got \['a'\]"):
        bestofn.exact_bon_kl(["a"], [1.0], 2)
    with pytest.raises(TypeError, match="rewards must hold numbers"):
        bestofn.bon_distribution([1.0], ["b"], 2)


def test_best_of_n_names_policy_n_and_reward_models(tiny_prepared):
    P = tiny_prepared
    with pytest.raises(TypeError, match="policy must be a causal LM .* got NoneType"):
        bestofn.best_of_n(None, P, ["review :"], 2)
    with pytest.raises(ValueError, match=r"n must be <= 1024 \(sampling.MAX_SAMPLES_PER_PROMPT.*got 10000000"):
        bestofn.best_of_n(P.sft, P, ["review :"], 10**7)
    with pytest.raises(TypeError, match=r"reward_models\['x'\] must be a reward model .* got int"):
        bestofn.sample_pool(P.sft, P, ["review :"], 2, reward_models={"x": 1})


def test_peak_difference_pairs_the_seeds():
    rng = np.random.default_rng(0)
    d = np.tile(np.linspace(0.2, 3.0, 12), (6, 1))
    shared = rng.normal(0, 0.05, size=(6, 1))           # what a seed's pool does to both curves
    r_a = bestofn.bon_form(d, 2.0, 1.0) + shared + rng.normal(0, 0.01, d.shape)     # peak at 1
    r_b = bestofn.bon_form(d, 2.0, 0.5) + shared + rng.normal(0, 0.01, d.shape)     # peak at 2
    out = bestofn.peak_difference(d, r_a, r_b, reps=300)
    assert out["difference"] == pytest.approx(-1.0, abs=0.05)
    assert out["ci"][1] < 0 and out["d_peak"][0] == pytest.approx(1.0, abs=0.05)
    same = bestofn.peak_difference(d, r_a, r_a, reps=300)
    assert same["difference"] == 0 and same["ci"] == (0.0, 0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        bestofn.peak_difference(d, r_a, r_b, kind="dpo")
    with pytest.raises(ValueError, match="need at least 2 seeds"):
        bestofn.peak_difference(d[:1], r_a[:1], r_b[:1])
