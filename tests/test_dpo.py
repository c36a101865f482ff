import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlnotes.dpo import (dpo_gradient, dpo_loss, implicit_reward, log_optimal_policy, log_partition,
                         optimal_policy)


def _problem(seed=0, prompts=4, responses=7):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(responses), size=prompts)
    r = rng.normal(size=(prompts, responses))
    return ref, r


# ----- optimal_policy / log_partition ---------------------------------------------------------

def test_optimal_policy_matches_direct_computation():
    ref, r = _problem()
    beta = 0.7
    unnorm = ref * np.exp(r / beta)
    np.testing.assert_allclose(optimal_policy(ref, r, beta), unnorm / unnorm.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r, beta), np.log(unnorm.sum(-1)), rtol=1e-12)
    np.testing.assert_allclose(log_optimal_policy(ref, r, beta), np.log(unnorm / unnorm.sum(-1, keepdims=True)),
                               rtol=1e-10)


def test_optimal_policy_is_the_maximiser():
    ref, r = _problem(1, prompts=3, responses=5)
    beta = 0.5
    pi_star = optimal_policy(ref, r, beta)

    def objective(pi):
        return (pi * r).sum(-1) - beta * (pi * np.log(pi / ref)).sum(-1)

    rng = np.random.default_rng(2)
    for _ in range(200):
        pi = rng.dirichlet(np.ones(5), size=3)
        gap = objective(pi_star) - objective(pi)
        kl = (pi * np.log(pi / pi_star)).sum(-1)
        np.testing.assert_allclose(gap, beta * kl, atol=1e-10)   # gap = beta KL(pi || pi*) >= 0
        assert (gap >= 0).all()


def test_optimal_policy_large_reward_over_beta_is_finite():
    ref, r = _problem(3)
    r = r * 1e4
    pi = optimal_policy(ref, r, 1e-3)          # r / beta up to ~1e7: exp would overflow
    log_z = log_partition(ref, r, 1e-3)
    assert np.isfinite(pi).all() and np.isfinite(log_z).all()
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-12)
    # all mass on the best response; log Z ~ max (log pi_ref + r / beta)
    assert (pi.argmax(-1) == r.argmax(-1)).all()
    np.testing.assert_allclose(log_z, (np.log(ref) + r / 1e-3).max(-1), rtol=1e-9)


def test_optimal_policy_beta_limits():
    ref, r = _problem(4)
    np.testing.assert_allclose(optimal_policy(ref, r, 1e6), ref, atol=1e-5)   # beta -> inf: pi_ref
    # shifting r by a per-prompt constant changes log Z by c / beta, not pi*
    c = np.arange(4.0)[:, None]
    np.testing.assert_allclose(optimal_policy(ref, r + c, 0.3), optimal_policy(ref, r, 0.3), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r + c, 0.3), log_partition(ref, r, 0.3) + c[:, 0] / 0.3)


def test_optimal_policy_torch_and_zero_ref_probs():
    ref = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0, 100.0]], dtype=torch.float64)
    pi = optimal_policy(ref, r, 1.0)
    assert torch.is_tensor(pi) and pi[0, 2] == 0     # no mass where pi_ref has none
    torch.testing.assert_close(pi.sum(-1), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(log_partition(ref, r, 1.0), torch.log(0.5 * torch.exp(r[:, 0]) + 0.5 * torch.exp(r[:, 1])))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_optimal_policy_bad_beta(beta):
    ref, r = _problem()
    with pytest.raises(ValueError, match="beta"):
        optimal_policy(ref, r, beta)
    with pytest.raises(ValueError, match="beta"):
        log_partition(ref, r, beta)


def test_optimal_policy_bad_inputs():
    ref, r = _problem()
    with pytest.raises(ValueError, match="shapes must match"):
        optimal_policy(ref, r[:, :3], 1.0)
    with pytest.raises(ValueError, match="ref_probs must sum to 1"):
        optimal_policy(ref * 2, r, 1.0)
    bad = ref.copy()
    bad[0, :2] = [-0.1, bad[0, 0] + bad[0, 1] + 0.1]
    with pytest.raises(ValueError, match="ref_probs must be >= 0"):
        optimal_policy(bad, r, 1.0)
    r_nan = r.copy()
    r_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="rewards must be finite"):
        log_partition(ref, r_nan, 1.0)


# ----- dpo_loss / implicit_reward ------------------------------------------------------------

def test_dpo_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 5 for _ in range(4))
    beta = 0.1
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    expected = -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr))))
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(chosen, beta * (pc - rc))
    torch.testing.assert_close(rejected, beta * (pr - rr))
    torch.testing.assert_close(implicit_reward(pc, rc, beta), chosen)


def test_dpo_loss_is_bt_nll_of_implicit_reward_and_log2_at_reference():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, generator=g) for _ in range(4))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, 0.5)
    torch.testing.assert_close(losses, -F.logsigmoid(chosen - rejected))
    losses0, c0, r0 = dpo_loss(rc, rr, rc, rr, 0.5)          # pi = pi_ref
    torch.testing.assert_close(losses0, torch.full((8,), math.log(2)))
    assert (c0 == 0).all() and (r0 == 0).all()


def test_dpo_loss_extreme_logps_finite_and_rewards_detached():
    pc = torch.tensor([-1e4, 0.0, -1e30, -3e3], requires_grad=True)
    pr = torch.tensor([0.0, -1e4, -1e-3, -1e30], requires_grad=True)
    ref = torch.zeros(4)
    losses, chosen, rejected = dpo_loss(pc, pr, ref, ref, 1.0)
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses[:2], torch.tensor([1e4, 0.0]))
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_dpo_loss_bad_beta(beta):
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta)


def test_dpo_loss_bad_shapes_and_non_finite():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_loss(x, torch.zeros(4), x, x, 0.1)
    with pytest.raises(ValueError, match="ref_rejected_logps must be finite"):
        dpo_loss(x, x, x, torch.tensor([0.0, float("-inf"), 0.0]), 0.1)
    with pytest.raises(ValueError, match="beta"):
        implicit_reward(x, x, 0.0)


# ----- dpo_gradient -------------------------------------------------------------------------

def test_dpo_gradient_matches_autograd():
    torch.manual_seed(0)
    vocab, batch = 6, 10
    logits = torch.randn(vocab, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(vocab), -1)
    yw, yl = torch.randint(vocab, (batch,)), torch.randint(vocab, (batch,))
    logp = torch.log_softmax(logits, -1)
    args = (logp[yw], logp[yl], ref_logp[yw], ref_logp[yl], 0.3)
    (expected,) = torch.autograd.grad(dpo_loss(*args)[0].mean(), [logits], retain_graph=True)
    (got,) = dpo_gradient([logits], *args)
    torch.testing.assert_close(got, expected)


# ----- the trainer on a tiny causal LM -------------------------------------------------------

from rlnotes import dpo, lm  # noqa: E402


def test_pair_logps_match_separate_sequence_logprobs(tiny):
    model, tok, data = tiny
    c, r = dpo.pair_logps(model, data)
    c_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["chosen_ids"], data["chosen_mask"])
    r_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["rejected_ids"],
                                  data["rejected_mask"])
    torch.testing.assert_close(c, c_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, r_alone, rtol=1e-5, atol=1e-5)
    # trimming all-padding columns and batching differently change nothing
    ref_all = dpo.reference_logps(model, data)
    ref_small = dpo.reference_logps(model, data, batch_size=3)
    torch.testing.assert_close(ref_all[0], c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref_small[1], ref_all[1], rtol=1e-5, atol=1e-5)
    assert ref_all[0].dtype == torch.float32 and ref_all[0].shape == (8,)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        dpo.reference_logps(model, data, batch_size=0)


def test_preference_metrics_at_reference(tiny):
    model, _, data = tiny
    m = dpo.preference_metrics(model, model, data, beta=0.1)
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.5)          # every pair a tie
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_train_starts_at_log2_learns_the_pairs_and_keeps_ref_frozen(tiny):
    model, _, data = tiny
    before = [p.clone() for p in model.parameters()]
    seen = []
    out = dpo.train(None, model, data, beta=0.5, epochs=30, batch_size=4, lr=1e-2, seed=0,
                    eval_data=data, eval_every=20, callback=lambda p: seen.append(1) or {"x": 1.0})
    policy, h = out.model, out.history
    assert isinstance(out.config, dpo.DPOConfig) and out.config.eval_every == 20
    u = h.updates
    assert u["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert u["rewards/chosen"][0] == 0 and u["rewards/rejected"][0] == 0
    assert u["rewards/accuracies"][0] == 0.5  # pi = pi_ref: every pair a tie, counted one half
    assert len(u["loss"]) == 60 and all(k in u for k in ("rewards/accuracies", "rewards/margins", "logps/chosen",
                                                          "logps/rejected", "eval/accuracy", "eval/x"))
    assert u["eval/accuracy"][-1] == 1.0 and u["eval/loss"][-1] < 0.2
    assert u["eval/step"] == [0.0, 20.0, 40.0, 60.0] and len(seen) == 4
    assert policy is not model
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    # deterministic
    h2 = dpo.train(None, model, data, beta=0.5, epochs=2, batch_size=4, lr=1e-2, seed=0).history
    assert h2.updates["loss"] == u["loss"][:4]


def test_train_bad_arguments(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match="beta"):
        dpo.train(None, model, data, beta=0.0)
    with pytest.raises(ValueError, match="lr"):
        dpo.train(None, model, data, lr=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        dpo.train(None, model, data, epochs=0)
    with pytest.raises(ValueError, match="policy must not be ref"):
        dpo.train(model, model, data)
    with pytest.raises(TypeError, match="betta"):
        dpo.train(None, model, data, betta=0.1)
    with pytest.raises(ValueError, match="data must be a dict"):
        dpo.train(None, model, {"prompt_ids": data["prompt_ids"]})
    bad = dict(data, chosen_ids=data["chosen_ids"][:3], chosen_mask=data["chosen_mask"][:3])
    with pytest.raises(ValueError, match="same number"):
        dpo.train(None, model, bad)
