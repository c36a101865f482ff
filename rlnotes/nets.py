"""Small networks for discrete-action control: a categorical policy pi_theta(a|s) and a value V(s)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

from .utils import check_finite, check_tensor


def mlp(sizes: list[int], activation=nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """A fully connected network with orthogonal initialisation (as in CleanRL and SB3)."""
    layers = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2 ** 0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, activation()]
    return nn.Sequential(*layers)


class CategoricalPolicy(nn.Module):
    """pi_theta(a|s) = softmax(logits_theta(s))_a; a small output gain starts it near uniform."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64):
        super().__init__()
        self.logits_net = mlp([obs_dim, hidden, hidden, n_actions], out_gain=0.01)

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits_net(obs))

    @property
    def obs_dim(self) -> int:
        """The width of the observations the policy takes."""
        return self.logits_net[0].in_features

    @property
    def n_actions(self) -> int:
        return self.logits_net[-1].out_features

    def logp(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi_theta(a_t|s_t) for each (observation, action) pair."""
        return self(obs).log_prob(actions)

    def log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """log pi_theta(.|s) for every action, [batch, n_actions]: a log-softmax, finite at extreme logits."""
        return torch.log_softmax(self.logits_net(obs), dim=-1)


class ValueNet(nn.Module):
    """The state-value baseline V_phi(s), fitted by regression on returns."""

    def __init__(self, obs_dim: int, hidden: int = 64):
        super().__init__()
        self.net = mlp([obs_dim, hidden, hidden, 1], out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def check_batch(net: nn.Module, obs, actions=None) -> None:
    """Check a batch for ``net`` (a ``CategoricalPolicy`` or an ``ActorCritic``: anything with
    ``obs_dim`` and ``n_actions``) at the entry of a function that trains it: ``obs`` a finite float
    tensor [batch, obs_dim], ``actions`` (if given) an integer tensor [batch] of actions in
    [0, n_actions). ``TypeError`` or ``ValueError`` naming the argument otherwise; reads only."""
    check_tensor("obs", obs)
    obs_dim, n_actions = getattr(net, "obs_dim", None), getattr(net, "n_actions", None)
    if obs.dim() != 2 or (obs_dim is not None and obs.shape[1] != obs_dim):
        width = "obs_dim" if obs_dim is None else f"{obs_dim} (the network's input width)"
        raise ValueError(f"obs must be [batch, {width}], got shape {tuple(obs.shape)}")
    check_finite("obs", obs)
    if actions is None:
        return
    check_tensor("actions", actions, "int")
    if tuple(actions.shape) != (len(obs),):
        raise ValueError(f"actions must be [batch] = [{len(obs)}], one per row of obs, "
                         f"got shape {tuple(actions.shape)}")
    bad = (actions < 0) | (actions >= n_actions) if n_actions is not None else None
    if bad is not None and bool(bad.any()):
        raise ValueError(f"actions must be in [0, {n_actions}) (the policy's {n_actions} actions), "
                         f"got {int(actions[bad][0])}")


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L^VF = 1/2 E_t[(V(s_t) - V^targ_t)^2], the one value loss of the book (over ``mask`` if given).

    The half makes its gradient V - V^targ. PPO's c_1 multiplies this; SB3 and RL Zoo use the
    unhalved squared error, so their c_1 = 0.5 is c_1 = 1 here.
    """
    sq = (values - returns).square()
    if mask is None:
        return 0.5 * sq.mean()
    m = mask.to(sq.dtype)
    return 0.5 * (sq * m).sum() / m.sum()


def fit_value(value_fn: ValueNet, optimizer: torch.optim.Optimizer, obs: torch.Tensor,
              returns: torch.Tensor, iters: int) -> float:
    """Regress V(s) on the returns for ``iters`` full-batch steps of ``value_loss``; returns the last loss."""
    for _ in range(iters):
        loss = value_loss(value_fn(obs), returns)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()
