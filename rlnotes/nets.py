"""Small networks for discrete-action control: a categorical policy pi_theta(a|s) and a value V(s)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical


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
