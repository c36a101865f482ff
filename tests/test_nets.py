"""rlnotes.nets: the one value loss of the book (1/2 MSE) and the value regression (moved from pg)."""

import pytest
import torch

from rlnotes.nets import ValueNet, fit_value, value_loss


def test_value_loss_is_half_the_mean_squared_error_and_its_gradient_is_v_minus_target():
    v = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    target = torch.tensor([0.0, 2.0, 1.0])
    loss = value_loss(v, target)
    assert loss.item() == pytest.approx(0.5 * (1 + 0 + 9) / 3)
    loss.backward()
    torch.testing.assert_close(v.grad, (v.detach() - target) / 3)  # d/dV of 1/2 mean (V - R)^2


def test_value_loss_over_a_mask_ignores_padding():
    v = torch.tensor([[1.0, 5.0], [3.0, 100.0]])
    target = torch.zeros(2, 2)
    mask = torch.tensor([[1, 0], [1, 0]])
    assert value_loss(v, target, mask).item() == pytest.approx(0.5 * (1 + 9) / 2)
    # a float mask gives the same
    assert value_loss(v, target, mask.float()).item() == pytest.approx(0.5 * (1 + 9) / 2)


def test_fit_value_reduces_error():
    torch.manual_seed(0)
    v = ValueNet(2)
    obs = torch.randn(64, 2)
    target = obs.sum(1)
    first = value_loss(v(obs), target).item()
    last = fit_value(v, torch.optim.Adam(v.parameters(), 1e-2), obs, target, 50)
    assert last < 0.5 * first
    # the returned number is the loss of the last step taken, measured before that step
    w = ValueNet(2)
    before = value_loss(w(obs), target).item()
    assert fit_value(w, torch.optim.Adam(w.parameters(), 1e-2), obs, target, 1) == pytest.approx(before, rel=1e-6)


def test_check_batch_names_obs_and_actions():  # issue 27
    from rlnotes.nets import CategoricalPolicy, check_batch

    policy = CategoricalPolicy(4, 3, hidden=8)
    assert (policy.obs_dim, policy.n_actions) == (4, 3)
    check_batch(policy, torch.zeros(5, 4), torch.tensor([0, 1, 2, 0, 1]))  # a valid batch passes
    with pytest.raises(TypeError, match="obs must be a torch.Tensor, got list"):
        check_batch(policy, [[0.0] * 4])
    with pytest.raises(ValueError, match=r"obs must be \[batch, 4 \(the network's input width\)\], got shape \(5,\)"):
        check_batch(policy, torch.zeros(5))
    with pytest.raises(ValueError, match="obs must be finite"):
        check_batch(policy, torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\) \(the policy's 3 actions\), got -1"):
        check_batch(policy, torch.zeros(2, 4), torch.tensor([0, -1]))
