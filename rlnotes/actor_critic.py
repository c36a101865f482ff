"""PPO's speed engineering, kept apart from the algorithm (``rlnotes.ppo``) that it serves.

PPO on CartPole spends its time in PyTorch's per-operation overhead, not in arithmetic (the
networks are 64 wide). Three pieces cut the number of operations without changing the maths,
each tested equal to its plain reference in ``tests/test_actor_critic.py``:

- ``ActorCritic``: the policy and the value network evaluated together (one matrix product per
  layer for both), with ``act`` sampling in NumPy for the rollout's small batches;
- ``clip_grad_norm``: ``torch.nn.utils.clip_grad_norm_`` in two foreach kernels;
- ``make_optimizer``: Adam with its fused kernel where available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nets import CategoricalPolicy, ValueNet


class ActorCritic(nn.Module):
    """pi_theta(a|s) and V(s) evaluated together: a ``CategoricalPolicy`` and a ``ValueNet`` packed.

    The two networks stay separate functions (no shared weights); packing them lets one matrix
    product per layer serve both (the first layers side by side, the second ones as a batched
    matmul), which roughly halves the number of tensor operations per step. ``act`` samples in
    NumPy on views of the parameters, for the rollout's small batches. ``unpack`` writes the
    weights back into the two modules.
    """

    def __init__(self, policy: CategoricalPolicy, value_fn: ValueNet):
        super().__init__()
        p = [m for m in policy.logits_net if isinstance(m, nn.Linear)]
        v = [m for m in value_fn.net if isinstance(m, nn.Linear)]
        if len(p) != 3 or len(v) != 3 or p[1].weight.shape != v[1].weight.shape:
            raise ValueError("ActorCritic packs two-hidden-layer networks of one width")
        self._pair = (policy, value_fn)  # a tuple: not registered as submodules
        self.hidden = p[1].weight.shape[0]
        data = lambda t: t.detach().clone()  # noqa: E731
        self.w1 = nn.Parameter(data(torch.cat([p[0].weight, v[0].weight])))       # [2H, obs_dim]
        self.b1 = nn.Parameter(data(torch.cat([p[0].bias, v[0].bias])))           # [2H]
        self.w2 = nn.Parameter(data(torch.stack([p[1].weight.T, v[1].weight.T])))  # [2, H, H], x @ w2
        self.b2 = nn.Parameter(data(torch.stack([p[1].bias, v[1].bias]).unsqueeze(1)))  # [2, 1, H]
        self.w_pi, self.b_pi = nn.Parameter(data(p[2].weight)), nn.Parameter(data(p[2].bias))
        self.w_v, self.b_v = nn.Parameter(data(v[2].weight)), nn.Parameter(data(v[2].bias))
        self._views, self._views_of = None, None

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_theta(.|s) [B, n_actions], V(s) [B]) for a batch of observations."""
        h = torch.tanh(F.linear(obs, self.w1, self.b1))
        h = h.view(len(obs), 2, self.hidden).transpose(0, 1)
        h = torch.tanh(torch.baddbmm(self.b2, h, self.w2))
        logits = F.linear(h[0], self.w_pi, self.b_pi)
        return torch.log_softmax(logits, dim=-1), F.linear(h[1], self.w_v, self.b_v).squeeze(-1)

    @property
    def obs_dim(self) -> int:
        return self.w1.shape[1]

    @property
    def n_actions(self) -> int:
        return self.w_pi.shape[0]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """(a ~ pi_theta(.|s), log pi_theta(a|s), V(s)) for a small batch, in NumPy (float32).

        Sampling inverts the CDF of pi(.|s) at u ~ U(0, 1) drawn from ``generator`` (torch's
        global generator if None). The NumPy views of the weights follow in-place updates (the
        optimiser, ``load_state_dict``); they are made again when a parameter is replaced (``.to``).
        """
        params = (self.w1, self.b1, self.w2, self.b2, self.w_pi, self.b_pi, self.w_v, self.b_v)
        where = tuple(t.data_ptr() for t in params)
        if self._views_of != where:
            self._views = [t.detach().cpu().numpy() for t in params]
            self._views_of = where
        w1, b1, w2, b2, w_pi, b_pi, w_v, b_v = self._views
        x = obs.numpy()
        h = np.tanh(x @ w1.T + b1).reshape(len(x), 2, self.hidden).transpose(1, 0, 2)
        h = np.tanh(h @ w2 + b2)
        logits = h[0] @ w_pi.T + b_pi
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        cdf = np.cumsum(np.exp(log_probs), -1)
        u = torch.rand(len(x), generator=generator).numpy()[:, None]
        a = np.minimum((u * cdf[:, -1:] > cdf[:, :-1]).sum(-1), log_probs.shape[1] - 1)
        value = (h[1] @ w_v.T + b_v)[:, 0]
        return (torch.from_numpy(a), torch.from_numpy(np.take_along_axis(log_probs, a[:, None], -1)[:, 0]),
                torch.from_numpy(value))

    @torch.no_grad()
    def unpack(self) -> tuple[CategoricalPolicy, ValueNet]:
        """Copy the packed weights back into the ``CategoricalPolicy`` and ``ValueNet`` and return them."""
        policy, value_fn = self._pair
        p = [m for m in policy.logits_net if isinstance(m, nn.Linear)]
        v = [m for m in value_fn.net if isinstance(m, nn.Linear)]
        H = self.hidden
        p[0].weight.copy_(self.w1[:H]); v[0].weight.copy_(self.w1[H:])  # noqa: E702
        p[0].bias.copy_(self.b1[:H]); v[0].bias.copy_(self.b1[H:])  # noqa: E702
        p[1].weight.copy_(self.w2[0].T); v[1].weight.copy_(self.w2[1].T)  # noqa: E702
        p[1].bias.copy_(self.b2[0, 0]); v[1].bias.copy_(self.b2[1, 0])  # noqa: E702
        p[2].weight.copy_(self.w_pi); p[2].bias.copy_(self.b_pi)  # noqa: E702
        v[2].weight.copy_(self.w_v); v[2].bias.copy_(self.b_v)  # noqa: E702
        return policy, value_fn


def make_optimizer(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with eps = 1e-5 (as in the PPO implementations of OpenAI Baselines, CleanRL and SB3)."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, eps=1e-5, fused=True)
    except (RuntimeError, TypeError):  # a device or torch version without the fused kernel
        return torch.optim.Adam(net.parameters(), lr=lr, eps=1e-5)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients by min(1, max_norm / ||g||), with ||g|| the norm of them all; returns ||g||."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm
