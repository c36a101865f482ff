"""Returns and advantages on rollouts of shape [T, N] (time steps, parallel environments).

``dones[t, i] = 1`` means the episode of environment ``i`` ended at step ``t``: nothing after
step ``t`` is carried back across it. A time limit (truncation) is handled by the rollout,
which folds gamma * V(final observation) into the last reward, as gymnasium recommends.
"""

from __future__ import annotations

import torch

from .rollout import Rollout
from .trainer import check_bool
from .utils import check_binary, check_in_range, check_positive, check_same_shape


def _check_rate(name: str, value) -> float:
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    return check_in_range(name, value, 0.0, 1.0)


def _check_tensor(name: str, x) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__} "
                        f"(convert with torch.as_tensor({name}))")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")


def _check(rewards, dones, gamma, values=None, last_value=None) -> torch.dtype:
    """Check the arguments; return the floating dtype to compute in (rewards' own, else float32)."""
    _check_rate("gamma", gamma)
    for name, x in (("rewards", rewards), ("dones", dones), ("values", values), ("last_value", last_value)):
        if x is not None:
            _check_tensor(name, x)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [T, N], got shape {tuple(rewards.shape)}")
    check_same_shape(rewards=rewards, dones=dones)
    if values is not None:
        check_same_shape(rewards=rewards, values=values)
    if last_value is not None and tuple(last_value.shape) != (rewards.shape[1],):
        raise ValueError(f"last_value must be [N] = [{rewards.shape[1]}], got shape {tuple(last_value.shape)}")
    check_binary("dones", dones)
    if rewards.is_floating_point():
        return rewards.dtype
    floats = [x.dtype for x in (values, last_value) if x is not None and x.is_floating_point()]
    return floats[0] if floats else torch.get_default_dtype()  # integer rewards: never truncated


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float,
                       last_value: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-to-go G_t = r_t + gamma (1 - d_t) G_{t+1}, with G_T = ``last_value`` (default 0).

    Integer rewards are computed in float32 (never truncated); float64 stays float64.
    """
    dtype = _check(rewards, dones, gamma, last_value=last_value)
    rewards = rewards.to(dtype)
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[1]) if last_value is None else last_value.to(rewards)
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * (1.0 - dones[t].to(rewards)) * running
        returns[t] = running
    return returns


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t),
    A_t = delta_t + gamma lam (1 - d_t) A_{t+1}.
    Returns (advantages, returns) with returns = advantages + values, the value targets.
    lam = 1 gives the discounted return minus V; lam = 0 gives the one-step TD error.
    """
    if last_value is None:
        raise TypeError("last_value must be a torch.Tensor [N]: V(s_T) of the state after the last step")
    dtype = _check(rewards, dones, gamma, values=values, last_value=last_value)
    rewards = rewards.to(dtype)
    _check_rate("lam", lam)
    if not values.is_floating_point():
        values = values.to(rewards)
    advantages = torch.zeros_like(rewards)
    next_value = last_value.to(rewards)
    running = rewards.new_zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        notdone = 1.0 - dones[t].to(rewards)
        delta = rewards[t] + gamma * notdone * next_value - values[t]
        running = delta + gamma * lam * notdone * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale the advantages to mean 0 and standard deviation 1 (a per-batch baseline).

    A single advantage has no spread: it becomes 0 (the batch mean is its own baseline).
    ``advantages`` must be a finite floating-point tensor whose mean and standard deviation are
    finite in its dtype, and ``eps`` finite and > 0 (``TypeError`` or ``ValueError`` naming them
    otherwise).
    """
    eps = check_positive("eps", eps)
    _check_tensor("advantages", advantages)
    if not advantages.is_floating_point():
        raise TypeError(f"advantages must be a floating-point tensor, got dtype {advantages.dtype}")
    if advantages.numel() < 2:
        return advantages - advantages.mean()
    mean, std = advantages.mean(), advantages.std()
    if not bool(torch.isfinite(mean) & torch.isfinite(std)):
        raise ValueError(f"advantages too large to normalise in {advantages.dtype}: their mean ({float(mean)}) or "
                         f"standard deviation ({float(std)}) is not finite (largest |advantage| "
                         f"{float(advantages.abs().max())}); scale them down or use float64")
    return (advantages - mean) / (std + eps)


def advantage_batch(batch, gamma: float, lam: float, normalize_advantages: bool = True):
    """A rollout made ready for a policy update: GAE advantages and value targets (``gae``),
    the time and environment axes merged, and the advantages normalised per batch if asked
    (``normalize_advantages``: True or False, ``TypeError`` otherwise). Returns (obs, actions,
    advantages, returns)."""
    normalize_advantages = check_bool("normalize_advantages", normalize_advantages)
    if not isinstance(batch, Rollout):
        raise TypeError(f"batch must be a rlnotes.rollout.Rollout (what Runner.rollout returns), "
                        f"got {type(batch).__name__}")
    adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, gamma, lam)
    obs, actions, adv, ret = batch.flat(batch.obs, batch.actions, adv, ret)
    return obs, actions, normalize(adv) if normalize_advantages else adv, ret
