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
