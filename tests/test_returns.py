"""rlnotes.returns: discounted returns, GAE, advantage batches and normalisation; integer rewards
give float returns, and NaN, bad dones or arrays are refused."""

import numpy as np
import pytest
import torch

from rlnotes.returns import advantage_batch, discounted_returns, gae, normalize
from rlnotes.rollout import Rollout


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0], [2.0], [3.0]])
    d = torch.zeros(3, 1)
    g = discounted_returns(r, d, 0.5)
    assert g.squeeze().tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def test_discounted_returns_stop_at_done_and_bootstrap_last_value():
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    g = discounted_returns(r, d, 0.9, last_value=torch.tensor([10.0, 10.0]))
    assert g[:, 0].tolist() == pytest.approx([1.0, 1 + 9.0])
    assert g[:, 1].tolist() == pytest.approx([1 + 0.9 * 10.0, 10.0])


def test_gae_lambda_one_is_return_minus_value():
    torch.manual_seed(0)
    r, v = torch.randn(6, 3), torch.randn(6, 3)
    d = (torch.rand(6, 3) < 0.3).float()
    last = torch.randn(3)
    adv, ret = gae(r, v, d, last, 0.95, 1.0)
    torch.testing.assert_close(adv, discounted_returns(r, d, 0.95, last) - v)
    torch.testing.assert_close(ret, adv + v)


def test_gae_lambda_zero_is_td_error():
    torch.manual_seed(1)
    r, v = torch.randn(5, 2), torch.randn(5, 2)
    d = torch.zeros(5, 2)
    d[2, 1] = 1.0
    last = torch.randn(2)
    adv, _ = gae(r, v, d, last, 0.9, 0.0)
    next_v = torch.cat([v[1:], last[None]])
    torch.testing.assert_close(adv, r + 0.9 * (1 - d) * next_v - v)


def test_nothing_crosses_an_episode_end():
    r = torch.tensor([[0.0], [0.0], [100.0]])
    d = torch.tensor([[0.0], [1.0], [0.0]])
    adv, _ = gae(r, torch.zeros(3, 1), d, torch.zeros(1), 0.99, 0.95)
    assert adv[0].item() == 0.0 and adv[1].item() == 0.0 and adv[2].item() == 100.0


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(torch.zeros(2, 1), torch.zeros(2, 1), gamma)


def test_bad_shapes():
    with pytest.raises(ValueError, match="shapes must match"):
        gae(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2), torch.zeros(2), 0.9, 0.9)
    with pytest.raises(ValueError, match="last_value"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), 0.9, 0.9)
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        discounted_returns(torch.zeros(3), torch.zeros(3), 0.9)


def test_normalize():
    a = normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert a.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert a.std().item() == pytest.approx(1.0, abs=1e-6)
    # a single advantage has no spread: it becomes 0, not NaN (its own baseline)
    assert normalize(torch.tensor([3.0])).tolist() == [0.0]
    # equal advantages: all 0, finite
    assert normalize(torch.full((4,), 2.5)).tolist() == [0.0] * 4


def test_advantage_batch_is_gae_flattened_and_normalised():
    torch.manual_seed(2)
    T, N = 5, 3
    batch = Rollout(obs=torch.randn(T, N, 4), actions=torch.randint(0, 2, (T, N)), logp=torch.randn(T, N),
                    rewards=torch.randn(T, N), dones=(torch.rand(T, N) < 0.3).float(), values=torch.randn(T, N),
                    last_value=torch.randn(N))
    adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, 0.9, 0.8)
    obs, actions, a, r = advantage_batch(batch, 0.9, 0.8, normalize_advantages=False)
    torch.testing.assert_close(obs, batch.obs.reshape(T * N, 4))
    torch.testing.assert_close(actions, batch.actions.reshape(-1))
    torch.testing.assert_close(a, adv.reshape(-1))
    torch.testing.assert_close(r, ret.reshape(-1))
    _, _, a_norm, r_norm = advantage_batch(batch, 0.9, 0.8)
    torch.testing.assert_close(a_norm, normalize(adv.reshape(-1)))
    torch.testing.assert_close(r_norm, ret.reshape(-1))  # the value targets are not normalised


def test_normalize_refuses_non_finite_advantages_and_bad_eps():
    with pytest.raises(ValueError, match=r"advantages must be finite \(it holds NaN or inf\)"):
        normalize(torch.tensor([1.0, float("nan"), 3.0]))  # an all-NaN result before
    with pytest.raises(ValueError, match="advantages must be finite"):
        normalize(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="eps must be > 0, got -1.0"):
        normalize(torch.tensor([1.0, 2.0]), eps=-1.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        normalize(torch.tensor([1.0, 2.0]), eps=float("nan"))
    with pytest.raises(TypeError, match=r"advantages must be a torch.Tensor, got list"):
        normalize([1.0, 2.0])
    with pytest.raises(TypeError, match="advantages must be a floating-point tensor, got dtype torch.int64"):
        normalize(torch.tensor([1, 2]))
    # valid neighbours: float64 stays float64 and the numbers are the formula's; an empty batch stays empty
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.equal(normalize(a), (a - a.mean()) / (a.std() + 1e-8))
    assert normalize(torch.zeros(0)).shape == (0,)


def test_advantage_batch_refuses_a_flag_that_is_not_a_bool():
    T, N = 3, 2
    batch = Rollout(obs=torch.randn(T, N, 4), actions=torch.zeros(T, N, dtype=torch.long), logp=torch.zeros(T, N),
                    rewards=torch.randn(T, N), dones=torch.zeros(T, N), values=torch.zeros(T, N),
                    last_value=torch.zeros(N))
    with pytest.raises(TypeError, match="normalize_advantages must be True or False, got 'no'"):
        advantage_batch(batch, 0.9, 0.8, normalize_advantages="no")  # a truthy string normalised before
    _, _, a, _ = advantage_batch(batch, 0.9, 0.8, normalize_advantages=np.bool_(False))  # NumPy's bool is a bool
    adv, _ = gae(batch.rewards, batch.values, batch.dones, batch.last_value, 0.9, 0.8)
    torch.testing.assert_close(a, adv.reshape(-1))


# ----- integer rewards, non-finite values, bad dones --------------------------------------------

def test_integer_rewards_give_float_returns():
    g = discounted_returns(torch.tensor([[1], [1]]), torch.tensor([[0], [0]]), 0.5)
    assert g.dtype == torch.float32 and g.tolist() == [[1.5], [1.0]]
    adv, ret = gae(torch.tensor([[1], [1]]), torch.tensor([[0], [0]]), torch.zeros(2, 1), torch.zeros(1), 0.5, 1.0)
    assert adv.dtype == torch.float32 and adv.tolist() == [[1.5], [1.0]] and ret.tolist() == [[1.5], [1.0]]
    g64 = discounted_returns(torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1), 0.5)
    assert g64.dtype == torch.float64
    assert discounted_returns(torch.ones(0, 3), torch.zeros(0, 3), 0.9).shape == (0, 3)  # no steps: no returns


def test_returns_refuse_nan_bad_dones_and_arrays():
    with pytest.raises(ValueError, match="rewards must be finite"):
        discounted_returns(torch.tensor([[float("nan")], [1.0]]), torch.zeros(2, 1), 0.5)
    with pytest.raises(ValueError, match="values must be finite"):
        gae(torch.ones(2, 1), torch.tensor([[float("inf")], [0.0]]), torch.zeros(2, 1), torch.zeros(1), 0.5, 0.9)
    with pytest.raises(ValueError, match="dones must hold only 0 and 1"):
        discounted_returns(torch.ones(2, 1), torch.tensor([[2.0], [0.0]]), 0.5)
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor, got ndarray"):
        discounted_returns(np.ones((2, 1)), np.zeros((2, 1)), 0.5)
    with pytest.raises(TypeError, match="gamma must be a number"):
        discounted_returns(torch.ones(2, 1), torch.zeros(2, 1), "0.9")


def test_normalize_refuses_advantages_whose_std_overflows_float32():
    with pytest.raises(ValueError, match=r"advantages too large to normalise in torch.float32: .*standard deviation "
                                         r"\(inf\) is not finite"):
        normalize(torch.tensor([3e38, -3e38]))
    torch.testing.assert_close(normalize(torch.tensor([3e38, -3e38], dtype=torch.float64)),
                               torch.tensor([1.0, -1.0], dtype=torch.float64) / 2 ** 0.5)


def test_advantage_batch_names_a_batch_that_is_not_a_rollout():
    from rlnotes.returns import advantage_batch
    with pytest.raises(TypeError, match="batch must be a rlnotes.rollout.Rollout .*, got dict"):
        advantage_batch({"rewards": torch.zeros(2)}, 0.99, 0.95)
