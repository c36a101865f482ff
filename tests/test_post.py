"""rlnotes.post: the centring measurement (against a brute-force computation)."""

import pytest
import torch

from rlnotes import post


def brute_force(grads, raw, baseline):
    """tr Cov of g_i (R_i - b_i) from the stacked vectors, with torch's own unbiased variance."""
    terms = torch.stack(grads) * (raw - baseline)[:, None]
    return terms.var(dim=0, unbiased=True).sum().item(), terms.mean(0)


def test_centring_moments_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    N, dim, offset = 40, 7, 1.3
    grads = [torch.randn(dim, generator=gen, dtype=torch.float64) for _ in range(N)]
    raw = 2.0 + torch.randn(N, generator=gen, dtype=torch.float64)
    b_prompt = 2.0 + 0.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    out = post.centring_moments(iter(grads), raw, b_prompt, offset)
    for name, b in (("uncentred", torch.zeros(N, dtype=torch.float64)), ("global", torch.full((N,), offset, dtype=torch.float64)),
                    ("per_prompt", b_prompt)):
        var, mean = brute_force(grads, raw, b)
        assert out["variance"][name] == pytest.approx(var, rel=1e-10)
        assert out["mean_norm"][name] == pytest.approx(mean.norm().item(), rel=1e-10)
    # the best constant minimises the variance over constants: a fine grid never beats it
    grid = torch.linspace(-3, 5, 801, dtype=torch.float64)
    grid_vars = [brute_force(grads, raw, torch.full((N,), c.item(), dtype=torch.float64))[0] for c in grid]
    assert out["variance_best_constant"] <= min(grid_vars) + 1e-9
    assert out["variance_best_constant"] == pytest.approx(brute_force(grads, raw, torch.full((N,), out["best_constant"],
                                                                                                  dtype=torch.float64))[0])
    a2, a1, a0 = out["constant_parabola"]
    for c in (-2.0, 0.0, offset, 4.0):
        assert a2 * c ** 2 + a1 * c + a0 == pytest.approx(brute_force(grads, raw, torch.full((N,), c, dtype=torch.float64))[0])
    assert -a1 / (2 * a2) == pytest.approx(out["best_constant"])
    # mean-zero random scores: |mean g|^2 is about tr Cov(g) / N
    assert 0.2 < out["score_mean_ratio"] < 5


def test_centring_moments_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        post.centring_moments(iter([torch.zeros(3)]), torch.zeros(1), torch.zeros(1), 0.0)
    with pytest.raises(ValueError, match="b_prompt"):
        post.centring_moments(iter([]), torch.zeros(4), torch.zeros(3), 0.0)


def test_centring_variance_on_a_tiny_model(tiny_prepared):
    P = tiny_prepared
    flags = [p.requires_grad for p in P.sft.parameters()]
    out = post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, n_prompts=6, n_baseline=2, seed=0)
    assert set(out["variance"]) == set(post.CENTRINGS)
    assert all(v > 0 and torch.isfinite(torch.tensor(v)) for v in out["variance"].values())
    assert out["variance_best_constant"] <= min(out["variance"]["uncentred"], out["variance"]["global"]) + 1e-9
    assert out["offset"] == pytest.approx(float(P.reward_model.offset))
    assert [p.requires_grad for p in P.sft.parameters()] == flags      # a frozen policy stays frozen
    again = post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, n_prompts=6, n_baseline=2, seed=0)
    assert again["variance"] == out["variance"]                         # seeded
    other = post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, n_prompts=6, n_baseline=2, seed=1)
    assert other["variance"] != out["variance"]


def test_centring_variance_bad_input(tiny_prepared):
    P = tiny_prepared
    with pytest.raises(ValueError, match="n_prompts"):
        post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, n_prompts=1)
    with pytest.raises(TypeError, match="n_baseline"):
        post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, n_baseline=2.5)
    with pytest.raises(ValueError, match="split"):
        post.centring_variance(P.sft, P.reward_model, P.tokenizer, P.task, split="dev")
