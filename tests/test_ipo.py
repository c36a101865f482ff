"""rlnotes.ipo: the IPO loss at known margins, its bounded optimum against DPO's, the trainer."""

import math

import pytest
import torch

from rlnotes import ipo


def test_ipo_loss_at_known_margins():
    beta = 0.25                                   # target margin 1 / (2 beta) = 2
    pc = torch.tensor([-1.0, -1.0, -3.0], requires_grad=True)
    pr = torch.tensor([-1.0, -3.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, -1.0])
    losses, c, r = ipo.ipo_loss(pc, pr, ref, ref, beta)
    # margins h = 0, 2, -2: losses (0 - 2)^2 = 4, 0, (-2 - 2)^2 = 16
    torch.testing.assert_close(losses, torch.tensor([4.0, 0.0, 16.0]))
    torch.testing.assert_close(c, torch.tensor([0.0, 0.0, -0.5]))
    torch.testing.assert_close(r, torch.tensor([0.0, -0.5, 0.0]))
    losses.sum().backward()                        # d/dpc (h - 2)^2 = 2 (h - 2)
    torch.testing.assert_close(pc.grad, torch.tensor([-4.0, 0.0, -8.0]))
    assert not c.requires_grad


@pytest.mark.parametrize("beta", [0, -1, math.inf, "a"])
def test_ipo_loss_bad_beta(beta):
    z = torch.zeros(2)
    with pytest.raises((ValueError, TypeError), match="beta"):
        ipo.ipo_loss(z, z, z, z, beta)


def test_ipo_loss_bad_shapes_and_non_finite():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        ipo.ipo_loss(z, z, z, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        ipo.ipo_loss(torch.tensor([0.0, math.nan]), z, z, z, 0.1)


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


def test_train_reaches_the_target_margin_and_keeps_ref_frozen(tiny):
    model, _, data = tiny
    before = [p.clone() for p in model.parameters()]
    out = ipo.train(model, data, eval_data=data, beta=0.5, epochs=40, batch_size=4, lr=1e-2, seed=0)
    u = out.history.updates
    assert u["loss"][0] == pytest.approx(1.0, abs=1e-5)            # h = 0 at the start: (0 - 1)^2
    assert u["rewards/accuracies"][0] == 0.5                        # ties count one half
    assert out.history.update_array("eval/margin")[-1] == pytest.approx(1.0, abs=0.1)
    assert u["eval/loss"][-1] < 0.02
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    again = ipo.train(model, data, beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0)
    assert again.history.updates["loss"] == u["loss"][:2]
    norm = ipo.train(model, data, beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0, length_normalize=True)
    assert norm.history.updates["loss"][0] == pytest.approx(1.0, abs=1e-5)


def test_train_callback_before_and_after_each_epoch(tiny):
    model, _, data = tiny
    seen = []
    out = ipo.train(model, data, beta=0.5, epochs=3, batch_size=4, lr=1e-2, seed=0,
                    callback=lambda policy: seen.append(policy.training) or {"n": len(seen), "text": "skipped"})
    assert out.history.update_array("eval/epoch").tolist() == [0, 1, 2, 3]
    assert out.history.update_array("eval/n").tolist() == [1, 2, 3, 4] and seen == [False] * 4   # in eval mode
    assert "eval/text" not in out.history.updates and "eval/loss" not in out.history.updates
    plain = ipo.train(model, data, beta=0.5, epochs=3, batch_size=4, lr=1e-2, seed=0)
    assert plain.history.updates["loss"] == out.history.updates["loss"]      # the callback does not perturb training


@pytest.mark.parametrize("kwargs, name", [({"beta": 0}, "beta"), ({"epochs": 0}, "epochs"),
                                          ({"length_normalize": 1}, "length_normalize")])
def test_train_bad_arguments(tiny, kwargs, name):
    model, _, data = tiny
    with pytest.raises((ValueError, TypeError), match=name):
        ipo.train(model, data, **kwargs)
    with pytest.raises(ValueError, match="data"):
        ipo.train(model, {"prompt_ids": 1})
