"""rlnotes.kto: the KTO loss (closed forms, z0 detached and clamped, TRL's weights), the unpaired labels,
and the trainer on a tiny model (determinism, the caller's models kept as found, refusals)."""

import numpy as np
import pytest
import torch

from rlnotes import kto, lm
from rlnotes.kto import kto_loss
from rlnotes.reward import Preferences


def t(*x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ----- kto_loss ---------------------------------------------------------------------------------

def test_kto_loss_closed_form_with_weights():
    pc, pr, pk = t(1.0, -2.0), t(-3.0), t(0.5, 1.5, 1.0)
    rc, rr, rk = t(0.0, 0.0), t(-1.0), t(0.0, 0.0, 0.0)
    beta, wd, wu = 0.5, 2.0, 0.7
    losses, chosen, rejected, z0 = kto_loss(pc, pr, pk, rc, rr, rk, beta, wd, wu)
    assert z0.item() == pytest.approx(1.0)
    sig = lambda v: 1 / (1 + np.exp(-v))
    expected = [wd * (1 - sig(beta * (1.0 - 1.0))), wd * (1 - sig(beta * (-2.0 - 1.0))),
                wu * (1 - sig(beta * (1.0 - (-2.0))))]
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(chosen.numpy(), [0.5, -1.0])
    np.testing.assert_allclose(rejected.numpy(), [-1.0])
    assert losses[0].item() == pytest.approx(2.0 * 0.5)          # r = z0: half the weight


def test_kto_loss_at_the_reference_is_half_of_each_weight():
    x = torch.randn(5, dtype=torch.float64)
    losses, chosen, rejected, z0 = kto_loss(x[:3], x[3:], x, x[:3], x[3:], x, 0.1, 1.0, 3.0)
    assert z0.item() == 0
    np.testing.assert_allclose(losses.numpy(), [0.5, 0.5, 0.5, 1.5, 1.5])
    assert (chosen == 0).all() and (rejected == 0).all()


def test_z0_is_clamped_at_zero_and_detached():
    pk = t(-2.0, -4.0, grad=True)                 # mismatched pairs less likely under pi: mean log-ratio -3
    pc = t(0.3, grad=True)
    losses, _, _, z0 = kto_loss(pc, t(), pk, t(0.0), t(), t(0.0, 0.0), 1.0)
    assert z0.item() == 0 and not z0.requires_grad
    assert losses.item() == pytest.approx(1 - 1 / (1 + np.exp(-0.3)))
    losses.mean().backward()
    assert pk.grad is None and pc.grad is not None
    pk = t(3.0, 5.0, grad=True)                   # positive: z0 is the mean, still no gradient
    losses, _, _, z0 = kto_loss(pc, t(), pk, t(0.0), t(), t(0.0, 0.0), 1.0)
    assert z0.item() == pytest.approx(4.0)
    assert torch.autograd.grad(losses.sum(), pk, allow_unused=True)[0] is None


def test_kto_loss_one_side_empty_and_gradient_signs():
    pc = t(0.0, 1.0, grad=True)
    losses, _, rejected, _ = kto_loss(pc, t(), t(0.0), t(0.0, 0.0), t(), t(0.0), 0.1)
    assert losses.shape == (2,) and rejected.numel() == 0
    losses.mean().backward()
    assert (pc.grad < 0).all()                   # desirable: raising log pi lowers the loss
    pr = t(0.0, grad=True)
    kto_loss(t(), pr, t(0.0), t(), t(0.0), t(0.0), 0.1)[0].mean().backward()
    assert (pr.grad > 0).all()                   # undesirable: lowering log pi lowers the loss


@pytest.mark.parametrize("kw, match", [(dict(beta=0.0), "beta"), (dict(beta=float("nan")), "beta"),
                                       (dict(desirable_weight=-1.0), "desirable_weight"),
                                       (dict(undesirable_weight=0), "undesirable_weight")])
def test_kto_loss_bad_numbers(kw, match):
    x = t(0.0)
    with pytest.raises(ValueError, match=match):
        kto_loss(x, x, x, x, x, x, **kw)


def test_kto_loss_bad_tensors_named():
    x = t(0.0)
    with pytest.raises(TypeError, match="policy_kl_logps"):
        kto_loss(x, x, [0.0], x, x, x)
    with pytest.raises(TypeError, match="ref_chosen_logps must be a 1-D"):
        kto_loss(x, x, x, torch.zeros(1, 1), x, x)
    with pytest.raises(ValueError, match="ref_rejected_logps must be finite"):
        kto_loss(x, x, x, x, t(float("inf")), x)
    with pytest.raises(ValueError, match="policy_chosen_logps and ref_chosen_logps"):
        kto_loss(t(0.0, 1.0), x, x, x, x, x)
    with pytest.raises(ValueError, match="at least one example"):
        kto_loss(t(), t(), x, t(), t(), x)


# ----- unpaired --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefs():
    g = torch.Generator().manual_seed(0)
    r1, r2 = torch.randn(200, generator=g) * 2, torch.randn(200, generator=g) * 2
    return Preferences([f"p{i % 7}" for i in range(200)], [f"w{i}" for i in range(200)],
                       [f"l{i}" for i in range(200)], torch.maximum(r1, r2), torch.minimum(r1, r2))


def test_unpaired_labeller_is_the_bradley_terry_labeller_against_the_mean(prefs):
    u = kto.unpaired(prefs, seed=3)
    assert len(u) == 400 and u.labels.dtype == torch.bool
    assert sorted(u.completions) == sorted(prefs.chosen + prefs.rejected)
    lookup = dict(zip(prefs.chosen + prefs.rejected, torch.cat([prefs.r_chosen, prefs.r_rejected]).tolist()))
    assert all(lookup[y] == pytest.approx(r) for y, r in zip(u.completions, u.r_star.tolist()))
    assert u.r_star[u.labels].mean() > u.r_star[~u.labels].mean() + 1.0
    p = torch.sigmoid(u.r_star - u.r_star.mean())               # P(up), the fraction matches its mean
    assert abs(u.labels.float().mean() - p.mean()) < 3 * (p * (1 - p)).mean().sqrt() / 20
    again = kto.unpaired(prefs, seed=3)
    assert again.completions == u.completions and torch.equal(again.labels, u.labels)
    assert not torch.equal(kto.unpaired(prefs, seed=4).labels, u.labels)


def test_unpaired_pairs_is_trls_unpairing(prefs):
    u = kto.unpaired(prefs, method="pairs", seed=0)
    up = {y for y, lab in zip(u.completions, u.labels.tolist()) if lab}
    assert up == set(prefs.chosen) and int(u.labels.sum()) == 200
    assert u.completions[:3] != prefs.chosen[:3]                # shuffled


def test_unpaired_refusals(prefs):
    with pytest.raises(TypeError, match="prefs"):
        kto.unpaired({"prompts": []})
    with pytest.raises(ValueError, match="method"):
        kto.unpaired(prefs, method="thumbs")
    with pytest.raises(ValueError, match="seed"):
        kto.unpaired(prefs, seed=-1)


# ----- the trainer -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def singles(tiny_prepared):
    return kto.unpaired(tiny_prepared.train_prefs, seed=0).encode(tiny_prepared.tokenizer)


def test_check_unpaired_names_what_is_wrong(singles):
    assert kto.check_unpaired(singles) == 64
    with pytest.raises(TypeError, match="data must be a dict"):
        kto.check_unpaired([1])
    with pytest.raises(ValueError, match="missing \\['label'\\]"):
        kto.check_unpaired({k: v for k, v in singles.items() if k != "label"})
    with pytest.raises(TypeError, match="data\\['completion_ids'\\]"):
        kto.check_unpaired({**singles, "completion_ids": singles["completion_ids"].float()})
    with pytest.raises(ValueError, match="only 0 and 1"):
        kto.check_unpaired({**singles, "label": singles["label"].long() * 2})
    with pytest.raises(ValueError, match="same number"):
        kto.check_unpaired({**singles, "label": singles["label"][:3]})


def test_reference_logps_is_the_sequence_logprob(tiny_prepared, singles):
    got = kto.reference_logps(tiny_prepared.sft, singles, batch_size=16)
    want = lm.sequence_logprob(tiny_prepared.sft, singles["prompt_ids"], singles["prompt_mask"],
                               singles["completion_ids"], singles["completion_mask"])
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


def _states(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def test_train_deterministic_logs_trls_keys_and_keeps_models(tiny_prepared, singles):
    sft = tiny_prepared.sft
    before = _states(sft)
    weights = [p.detach().clone() for p in sft.parameters()]
    a = kto.train(singles, ref=sft, batch_size=16, seed=1, epochs=2)
    b = kto.train(singles, ref=sft, batch_size=16.0, seed=1, epochs=2.0)
    assert set(a.history.updates) == {"loss", "kl/k1_per_sequence", "rewards/chosen", "rewards/rejected",
                                      "rewards/margins", "logps/chosen", "logps/rejected", "seconds"}
    assert len(a.history.updates["loss"]) == 8 and b.config.epochs == 2
    for key in ("loss", "kl/k1_per_sequence", "logps/chosen"):
        np.testing.assert_array_equal(a.history.update_array(key), b.history.update_array(key))
    assert a.history.updates["loss"][0] == pytest.approx(0.5 * 1.0)   # pi = pi_ref at step 0: every loss 1/2
    assert all(k >= 0 for k in a.history.updates["kl/k1_per_sequence"])
    assert _states(sft) == before and all(torch.equal(p, w) for p, w in zip(sft.parameters(), weights))
    assert any(not torch.equal(p, w) for p, w in zip(a.model.parameters(), weights))


def test_train_trains_the_callers_policy_and_hands_it_back(tiny_prepared, singles):
    import copy

    policy = copy.deepcopy(tiny_prepared.sft).eval()
    policy.requires_grad_(False)
    policy.transformer.h[0].requires_grad_(True)
    before = _states(policy)
    frozen = [p.detach().clone() for p in policy.transformer.wte.parameters()]
    out = kto.train(singles, ref=tiny_prepared.sft, policy=policy, batch_size=32, shuffle=False)
    assert out.model is policy and _states(policy) == before
    assert all(torch.equal(p, f) for p, f in zip(policy.transformer.wte.parameters(), frozen))


def test_train_refusals(tiny_prepared, singles):
    sft = tiny_prepared.sft
    with pytest.raises(ValueError, match="batch_size"):
        kto.train(singles, ref=sft, batch_size=1)
    with pytest.raises(ValueError, match="policy must not be ref"):
        kto.train(singles, ref=sft, policy=sft)
    with pytest.raises(ValueError, match="undesirable_weight"):
        kto.train(singles, ref=sft, undesirable_weight=0)
    with pytest.raises(TypeError, match="unknown|unexpected"):
        kto.train(singles, ref=sft, lr_schedule="cosine")
    with pytest.raises(ValueError, match="ref_logps must have shape"):
        kto.train(singles, ref=sft, ref_logps=torch.zeros(3))
    with pytest.raises(TypeError, match="config must be a KTOConfig"):
        kto.train(singles, config=object(), ref=sft)


def test_ctrl_c_inside_a_step_finishes_it_then_stops_with_the_result(monkeypatch, tiny_prepared, singles,
                                                                      ctrl_c_raises, sigint_on_call):
    from rlnotes.trainer import TrainingInterrupted

    kw = dict(epochs=2, batch_size=16, seed=0)  # 8 steps
    full = kto.train(singles, ref=tiny_prepared.sft, **kw)
    calls = []
    monkeypatch.setattr(kto, "kto_step", sigint_on_call(kto.kto_step, 3, calls))
    with pytest.raises(TrainingInterrupted) as stop:
        kto.train(singles, ref=tiny_prepared.sft, **kw)
    out = stop.value.result
    assert len(calls) == 3 and out.history.updates["loss"] == full.history.updates["loss"][:3]
    assert not out.model.training
