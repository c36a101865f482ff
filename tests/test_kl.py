"""rlnotes.kl: the exact KL over a finite set of outcomes and the k1, k2, k3 sample estimators."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlnotes.kl import exact_kl, k3, kl_estimators, mean_kl, sequence_kl


def test_exact_kl_matches_torch_on_log_probabilities():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(5, 6), torch.randn(5, 6)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p_logits),
                                            torch.distributions.Categorical(logits=q_logits))
    torch.testing.assert_close(exact_kl(F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)), ref)
    assert exact_kl(F.log_softmax(p_logits, -1), F.log_softmax(p_logits, -1)).abs().max().item() < 1e-6
    # mean_kl is its mean over the states
    torch.testing.assert_close(mean_kl(F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)), ref.mean())


def test_exact_kl_zero_probabilities_and_extreme_logits():
    inf = math.inf
    # p(a) = 0 adds exactly 0, even where q(a) = 0 too
    logp = torch.tensor([[0.0, -inf]])
    assert exact_kl(logp, logp).item() == 0.0  # 0 log 0 = 0, not NaN
    assert exact_kl(logp, torch.log(torch.tensor([[0.5, 0.5]]))).item() == pytest.approx(math.log(2))
    # p(a) > 0 = q(a): +inf
    assert exact_kl(torch.log(torch.tensor([[0.5, 0.5]])), logp).item() == inf
    # logits of size 1e4 through a log-softmax: finite
    big = F.log_softmax(torch.tensor([[1e4, 0.0, -1e4]]), -1)
    other = F.log_softmax(torch.tensor([[0.0, 1e4, -1e4]]), -1)
    assert math.isfinite(exact_kl(big, other).item()) and exact_kl(big, other).item() == pytest.approx(1e4, rel=1e-6)
    with pytest.raises(ValueError, match="shapes must match"):
        exact_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_kl_estimators_bias_and_sign():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(6), torch.randn(6)
    logp, logq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    exact = exact_kl(logp, logq).item()
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=p_logits),
                                            torch.distributions.Categorical(logits=q_logits)).item()
    assert exact == pytest.approx(ref, rel=1e-5)
    y = torch.distributions.Categorical(logits=p_logits).sample((200_000,))
    k = kl_estimators(logp[y], logq[y])
    assert k["k1"].mean().item() == pytest.approx(exact, abs=0.02)  # unbiased
    assert k["k3"].mean().item() == pytest.approx(exact, abs=0.02)  # unbiased
    assert (k["k1"] < 0).any() and (k["k2"] >= 0).all() and (k["k3"] >= 0).all()
    one = kl_estimators(torch.tensor([-1.0]), torch.tensor([-2.0]))  # log rho = -1
    assert one["k1"].item() == 1.0 and one["k2"].item() == 0.5
    assert one["k3"].item() == pytest.approx(math.exp(-1) - 1 + 1)
    torch.testing.assert_close(one["k3"], k3(torch.tensor([-1.0]), torch.tensor([-2.0])))
    with pytest.raises(ValueError, match="shapes must match"):
        kl_estimators(torch.zeros(2), torch.zeros(3))


def test_k3_is_never_negative_and_finite_at_large_log_ratios():
    logp = torch.tensor([0.0, -30.0, -1e-3, -50.0])
    logq = torch.tensor([-30.0, 0.0, -1e-3, -0.0])
    out = k3(logp, logq)
    assert torch.isfinite(out).all() and (out >= 0).all() and out[2] == 0


def test_sequence_kl_sums_exact_token_kl_under_the_mask():
    g = torch.Generator().manual_seed(0)
    logits, logits_ref = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    p, q = torch.softmax(logits, -1), torch.softmax(logits_ref, -1)
    per_token = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(sequence_kl(logits, logits_ref, mask), (per_token * mask).sum(1))
    assert torch.all(sequence_kl(logits, logits, mask) == 0)


# ------------------------------------------------------------------------------- bad input

def test_exact_kl_refuses_logits_and_probabilities_naming_the_argument():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    logp = F.log_softmax(logits, -1)
    # unnormalised logits: exact_kl(logits, logp) of one distribution gave logsumexp(logits), not 0
    with pytest.raises(ValueError, match=r"logp must be log-probabilities .* got logsumexp 2\.46.*log_softmax"):
        exact_kl(logits, logp)
    # probabilities in place of log-probabilities
    with pytest.raises(ValueError, match=r"logq must be log-probabilities .*torch\.log\(probs\)"):
        exact_kl(logp, logp.exp())
    with pytest.raises(ValueError, match="logp must be log-probabilities; it holds NaN"):
        exact_kl(torch.tensor([[math.nan, 0.0]]), torch.log(torch.tensor([[0.5, 0.5]])))
    with pytest.raises(ValueError, match=r"logp must have a non-empty last axis .* \(2, 0\)"):
        exact_kl(torch.zeros(2, 0), torch.zeros(2, 0))
    with pytest.raises(TypeError, match="logq must hold floating-point numbers"):
        exact_kl(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="logp must be a tensor"):
        exact_kl("log p", logp)
    # mean_kl names its own arguments and needs a state
    with pytest.raises(ValueError, match="logp_new must be log-probabilities"):
        mean_kl(logp, logits)
    with pytest.raises(ValueError, match="logp_old must hold at least one state"):
        mean_kl(torch.zeros(0, 3), torch.zeros(0, 3))


def test_exact_kl_accepts_what_the_callers_pass():
    """The valid neighbours: a Categorical's (normalised) ``.logits`` as pg and trpo pass them, a
    float32 log-softmax over a GPT-2-sized vocabulary, half precision, float64, nested lists."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g) * 10, torch.randn(4, 3, generator=g)
    dist_a, dist_b = torch.distributions.Categorical(logits=a), torch.distributions.Categorical(logits=b)
    torch.testing.assert_close(mean_kl(dist_a.logits, dist_b.logits),
                               torch.distributions.kl_divergence(dist_a, dist_b).mean())
    big = F.log_softmax(torch.randn(8, 50257, generator=g) * 5, -1)
    assert torch.isfinite(exact_kl(big, big.flip(-1))).all()
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert exact_kl(F.log_softmax(a.to(dtype), -1), F.log_softmax(b.to(dtype), -1)).dtype == dtype
    lp, lq = F.log_softmax(a, -1), F.log_softmax(b, -1)
    torch.testing.assert_close(exact_kl(lp.tolist(), lq.tolist()), exact_kl(lp, lq))


def test_sequence_kl_refuses_a_mask_that_would_broadcast_and_bad_logits():
    g = torch.Generator().manual_seed(0)
    logits, logits_ref = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    for mask in (torch.ones(3), torch.ones(2, 1)):  # broadcast silently before
        with pytest.raises(ValueError, match=r"logits must be \[B, T, V\] and mask \[B, T\]"):
            sequence_kl(logits, logits_ref, mask)
    with pytest.raises(ValueError, match="shapes must match: logits"):
        sequence_kl(logits, logits_ref[:1], torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        sequence_kl(logits, logits_ref, torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="logits_ref must not hold NaN"):
        sequence_kl(logits, torch.full_like(logits_ref, math.nan), torch.ones(2, 3))
    # valid neighbours: a bool mask, and a -inf logit (a banned token)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(sequence_kl(logits, logits_ref, mask.bool()),
                               sequence_kl(logits, logits_ref, mask.float()))
    banned = logits.clone()
    banned[..., 0] = -math.inf
    assert torch.isfinite(sequence_kl(banned, logits_ref, mask)).all()


def test_k3_and_estimators_refuse_shapes_that_broadcast_and_non_finite_input():
    with pytest.raises(ValueError, match=r"shapes must match: logp \(3,\), logp_ref \(1,\)"):
        k3(torch.zeros(3), torch.zeros(1))  # broadcast to 3 values before
    with pytest.raises(ValueError, match="shapes must match"):
        k3(torch.zeros(3, 1), torch.zeros(1, 3))  # a [3, 3] table before
    with pytest.raises(ValueError, match="logp must be finite"):
        kl_estimators(torch.tensor([math.nan, -1.0]), torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match="logp_ref must be finite"):
        k3(torch.tensor([-1.0]), torch.tensor([math.inf]))
    with pytest.raises(TypeError, match="logp_ref must be a tensor"):
        kl_estimators(torch.zeros(2), None)
    # valid neighbour: lists of floats, as tensors
    torch.testing.assert_close(k3([-1.0], [-2.0]), k3(torch.tensor([-1.0]), torch.tensor([-2.0])))
