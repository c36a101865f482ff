"""Chapter 3: proximal policy optimisation (Schulman et al. 2017, "PPO").

PPO keeps TRPO's surrogate objective but replaces the KL constraint by clipping. With the
probability ratio (eq. 6 of the paper)

    r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t),

the clipped surrogate objective (eq. 7) is

    L^CLIP(theta) = E_t[ min( r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t ) ],

and the loss PPO minimises adds a value-function error and an entropy bonus (eq. 9):

    L^{CLIP+VF+S} = E_t[ L^CLIP_t - c_1 (V_theta(s_t) - V^targ_t)^2 + c_2 S[pi_theta](s_t) ].

``train`` is PPO with the usual implementation details (vectorised environments, GAE,
per-minibatch advantage normalisation, several epochs of minibatches, gradient-norm clipping,
optional annealing of the learning rate and of eps), in the spirit of CleanRL's ``ppo.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nets import CategoricalPolicy, ValueNet
from .pg import check_train_args, normalize
from .returns import gae
from .rollout import History, Runner, Timer
from .utils import check_in_range, check_positive, check_positive_int, check_same_shape, seed_everything


def ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(log pi_theta - log pi_theta_old) (eq. 6)."""
    check_same_shape(logp=logp, logp_old=logp_old)
    return torch.exp(logp - logp_old)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps: float) -> torch.Tensor:
    """The per-sample clipped objective of eq. 7, min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t).

    This is the quantity to *maximise* (its mean is L^CLIP). Inputs may be tensors or array-likes
    of one shape; ``eps`` must be finite and > 0 (``ValueError`` otherwise).
    """
    eps = check_positive("eps", eps)
    ratio = torch.as_tensor(ratio)
    advantages = torch.as_tensor(advantages, dtype=ratio.dtype if ratio.is_floating_point() else None)
    check_same_shape(ratio=ratio, advantages=advantages)
    return torch.min(ratio * advantages, ratio.clamp(1.0 - eps, 1.0 + eps) * advantages)


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """The estimator E_t[(r_t - 1) - log r_t] of KL[pi_old || pi_theta] (>= 0 sample by sample, unbiased)."""
    return (torch.expm1(log_ratio) - log_ratio).mean()


def categorical_kl(old_log_probs: torch.Tensor, new_log_probs: torch.Tensor) -> torch.Tensor:
    """E_s[ KL[pi_old(.|s) || pi_new(.|s)] ] = mean_s sum_a pi_old(a|s) (log pi_old(a|s) - log pi_new(a|s)), exact."""
    check_same_shape(old_log_probs=old_log_probs, new_log_probs=new_log_probs)
    return (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1).mean()


class PPOLoss(NamedTuple):
    """The scalar loss to minimise and its parts, all detached except ``loss``."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor | None = None, eps: float = 0.2, vf_coef: float = 0.5,
             ent_coef: float = 0.0, diagnostics: bool = True, check: bool = True) -> PPOLoss:
    """-L^{CLIP+VF+S} of eq. 9: -L^CLIP + c_1 E_t[(V(s_t) - V^targ_t)^2] - c_2 E_t[S[pi](s_t)].

    ``logp`` (log pi_theta(a_t|s_t), with gradient), ``logp_old``, ``advantages``, ``values``
    (V(s_t), with gradient), ``returns`` (the targets V^targ_t) and ``entropy`` (S per state) are
    1-D tensors of one length; ``entropy`` may be None when ``ent_coef`` is 0 (then reported as
    nan). Also returned, for logging: the approximate KL E_t[(r - 1) - log r] and the fraction of
    samples whose ratio lies outside [1 - eps, 1 + eps] (None with ``diagnostics=False``).
    ``check=False`` skips the argument checks (``update`` checks once, not on every minibatch).
    """
    if check:
        eps = check_positive("eps", eps)
        check_in_range("vf_coef", vf_coef, 0.0, math.inf)
        check_in_range("ent_coef", ent_coef, 0.0, math.inf)
        if entropy is None and ent_coef > 0:
            raise ValueError(f"entropy is needed when ent_coef > 0, got ent_coef={ent_coef}")
        check_same_shape(logp=logp, logp_old=logp_old, advantages=advantages, values=values, returns=returns,
                         **({} if entropy is None else {"entropy": entropy}))
    log_ratio = logp - logp_old
    r = torch.exp(log_ratio)
    policy_loss = -clipped_surrogate(r, advantages, eps).mean()
    value_loss = (values - returns).square().mean()
    loss = policy_loss + vf_coef * value_loss
    entropy = torch.tensor(math.nan) if entropy is None else entropy.mean()
    if ent_coef > 0:
        loss = loss - ent_coef * entropy
    kl = clip_fraction = None
    if diagnostics:
        with torch.no_grad():
            kl = approx_kl(log_ratio)
            clip_fraction = ((r - 1.0).abs() > eps).float().mean()
    return PPOLoss(loss, policy_loss.detach(), value_loss.detach(), entropy.detach(), kl, clip_fraction)


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
        self._views = None

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_theta(.|s) [B, n_actions], V(s) [B]) for a batch of observations."""
        h = torch.tanh(F.linear(obs, self.w1, self.b1))
        h = h.view(len(obs), 2, self.hidden).transpose(0, 1)
        h = torch.tanh(torch.baddbmm(self.b2, h, self.w2))
        logits = F.linear(h[0], self.w_pi, self.b_pi)
        return torch.log_softmax(logits, dim=-1), F.linear(h[1], self.w_v, self.b_v).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    @torch.no_grad()
    def act(self, obs: torch.Tensor):
        """(a ~ pi_theta(.|s), log pi_theta(a|s), V(s)) for a small batch, in NumPy (float32).

        Sampling inverts the CDF of pi(.|s) at u ~ U(0, 1) drawn from torch's global generator.
        """
        if self._views is None:  # the optimiser updates parameters in place, so views stay current
            self._views = [t.detach().numpy() for t in (self.w1, self.b1, self.w2, self.b2, self.w_pi,
                                                        self.b_pi, self.w_v, self.b_v)]
        w1, b1, w2, b2, w_pi, b_pi, w_v, b_v = self._views
        x = obs.numpy()
        h = np.tanh(x @ w1.T + b1).reshape(len(x), 2, self.hidden).transpose(1, 0, 2)
        h = np.tanh(h @ w2 + b2)
        logits = h[0] @ w_pi.T + b_pi
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        cdf = np.cumsum(np.exp(log_probs), -1)
        u = torch.rand(len(x)).numpy()[:, None]
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


def update(net: ActorCritic, optimizer: torch.optim.Optimizer, obs: torch.Tensor, actions: torch.Tensor,
           logp_old: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, *, epochs: int = 10,
           minibatch_size: int = 64, eps: float = 0.2, vf_coef: float = 0.5, ent_coef: float = 0.0,
           max_grad_norm: float | None = 0.5, normalize_advantages: bool = True) -> dict:
    """``epochs`` passes of minibatch gradient steps on ``ppo_loss`` over one batch of experience.

    The batch is reshuffled each epoch (``torch.randperm``; no shuffle when one minibatch holds it
    all), the advantages are normalised per minibatch, and the gradient norm of all parameters is
    clipped to ``max_grad_norm`` (None: no clipping). Returns the last minibatch's loss terms.
    """
    check_ppo_args(epochs, minibatch_size, eps, max_grad_norm)
    check_in_range("vf_coef", vf_coef, 0.0, math.inf)
    check_in_range("ent_coef", ent_coef, 0.0, math.inf)
    check_same_shape(actions=actions, logp_old=logp_old, advantages=advantages, returns=returns)
    n = len(obs)
    params = list(net.parameters())
    actions = actions.unsqueeze(-1)
    single = minibatch_size >= n  # one minibatch per epoch: no shuffling, normalise once
    if single and normalize_advantages and n > 1:
        advantages = normalize(advantages)
    for epoch in range(epochs):
        order = None if single else torch.randperm(n)
        for start in range(0, n, minibatch_size):
            idx = slice(None) if single else order[start:start + minibatch_size]
            adv = advantages[idx]
            if normalize_advantages and not single and adv.numel() > 1:
                adv = normalize(adv)
            last = epoch == epochs - 1 and start + minibatch_size >= n
            log_probs, values = net(obs[idx])
            logp = log_probs.gather(-1, actions[idx]).squeeze(-1)
            entropy = None
            if ent_coef > 0 or last:
                with torch.set_grad_enabled(ent_coef > 0 and torch.is_grad_enabled()):
                    entropy = -(log_probs.exp() * log_probs).sum(-1)
            out = ppo_loss(logp, logp_old[idx], adv, values, returns[idx], entropy, eps, vf_coef, ent_coef,
                           diagnostics=last, check=False)
            for p in params:  # optimizer.zero_grad(set_to_none=True), without its profiling hooks
                p.grad = None
            out.loss.backward()
            if max_grad_norm is not None:
                clip_grad_norm(params, max_grad_norm)
            optimizer.step()
    return {name: float(value.detach()) for name, value in out._asdict().items()}


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients by min(1, max_norm / ||g||), with ||g|| the norm of them all; returns ||g||."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


def check_ppo_args(epochs, minibatch_size, eps, max_grad_norm, lr=None):
    check_positive_int("epochs", epochs)
    check_positive_int("minibatch_size", minibatch_size)
    check_positive("eps", eps)
    if lr is not None:
        check_positive("lr", lr)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)


def train(env_id: str = "CartPole-v1", *, total_steps: int, seed: int, lr: float = 2e-3,
          num_envs: int = 8, num_steps: int = 64, gamma: float = 0.98, lam: float = 0.8,
          epochs: int = 15, minibatch_size: int = 256, eps: float = 0.2, vf_coef: float = 0.5,
          ent_coef: float = 0.0, max_grad_norm: float | None = 0.5, anneal_lr: bool = True,
          anneal_eps: bool = True, hidden: int = 64, normalize_advantages: bool = True,
          stop_return: float | None = None) -> History:
    """PPO-Clip (Algorithm 1 of the paper) on any gymnasium environment with a Discrete action space.

    Each iteration collects ``num_envs * num_steps`` steps with pi_theta_old, computes GAE(gamma,
    lam) advantages (truncated episodes bootstrap from V, as in ``rlnotes.rollout``), then runs
    ``update``: ``epochs`` passes of minibatch Adam steps on eq. 9. With ``anneal_lr`` /
    ``anneal_eps`` the learning rate and eps fall linearly to 0 over ``total_steps`` (the factor
    is 1 - steps done before the iteration / total_steps). ``stop_return``: stop after the
    iteration in which the mean of the last 20 episode returns first reaches it (the schedules
    still use ``total_steps``).

    The defaults are RL Baselines3 Zoo's tuned values for CartPole-v1 (gamma 0.98, lam 0.8,
    eps 0.2, c_1 0.5, c_2 0, 8 environments) except three: 512 steps per batch (as in chapters 1
    and 2), split into 2 minibatches of 256 for 15 epochs, and a learning rate of 2e-3. That is
    30 Adam steps per 512 environment steps where Zoo takes 40 (20 epochs of one minibatch per
    256 steps), at twice its learning rate; over seeds 0-29 the median number of steps to a
    20-episode mean return of 475 was 22 360 (``bench/ppo_cartpole.py`` compares with SB3).

    The history logs per update ``env_steps``, ``kl`` (exact mean KL[pi_old || pi_new] over the
    batch's states), ``approx_kl``, ``clip_fraction``, ``policy_loss``, ``value_loss``,
    ``entropy``, ``lr``, ``eps``, ``ratio_min`` / ``ratio_max`` (the extreme r_t over the batch
    after the update) and ``seconds``. A continuous action space raises ``ValueError``.
    """
    check_train_args(total_steps, num_envs, num_steps, gamma, lam)
    check_ppo_args(epochs, minibatch_size, eps, max_grad_norm, lr)
    seed_everything(seed)
    history = History()
    runner = Runner(env_id, num_envs, seed, gamma, history)
    net = ActorCritic(CategoricalPolicy(runner.obs_dim, runner.n_actions, hidden), ValueNet(runner.obs_dim, hidden))
    optimizer = make_optimizer(net, lr)
    while runner.steps < total_steps:
        frac = 1.0 - runner.steps / total_steps
        lr_now = lr * frac if anneal_lr else lr
        eps_now = eps * frac if anneal_eps else eps
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        with Timer() as timer:
            batch = runner.rollout(net, net.value, num_steps)
            adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, gamma, lam)
            obs, actions, logp_old, adv, ret = batch.flat(batch.obs, batch.actions, batch.logp, adv, ret)
            with torch.no_grad():
                old_log_probs = net(obs)[0]
            stats = update(net, optimizer, obs, actions, logp_old, adv, ret, epochs=epochs,
                           minibatch_size=minibatch_size, eps=eps_now, vf_coef=vf_coef, ent_coef=ent_coef,
                           max_grad_norm=max_grad_norm, normalize_advantages=normalize_advantages)
            with torch.no_grad():
                new_log_probs = net(obs)[0]
                kl = categorical_kl(old_log_probs, new_log_probs)
                r = torch.exp(new_log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - logp_old)
        history.log(env_steps=runner.steps, kl=kl, approx_kl=stats["approx_kl"],
                    clip_fraction=stats["clip_fraction"], policy_loss=stats["policy_loss"],
                    value_loss=stats["value_loss"], entropy=stats["entropy"], lr=lr_now, eps=eps_now,
                    ratio_min=r.min(), ratio_max=r.max(), seconds=timer.seconds)
        if stop_return is not None and history.steps_to_reach(stop_return) < math.inf:
            break
    runner.close()
    history.policy, history.value_fn = net.unpack()
    return history


def kl_bound_inside_clip(eps: float) -> float:
    """eps^2 / (2 (1 - eps)^2): an upper bound on KL[pi_old || pi] in a state where every ratio stays in the clip range.

    If r(a) = pi(a|s) / pi_old(a|s) lies in [1 - eps, 1 + eps] for every action, Taylor's theorem
    gives -log r <= (1 - r) + (1 - r)^2 / (2 (1 - eps)^2), and E_{a~pi_old}[1 - r] = 0, so
    KL[pi_old || pi] = E_{a~pi_old}[-log r] <= eps^2 / (2 (1 - eps)^2). A larger measured KL means
    some ratio has left the clip range: clipping removes the incentive, it does not forbid the move.
    """
    eps = check_in_range("eps", eps, 0.0, 1.0)
    if eps >= 1.0:
        return math.inf
    return eps ** 2 / (2.0 * (1.0 - eps) ** 2)


def epochs_on_one_batch(env_id: str = "CartPole-v1", *, seed: int, epochs: int, eps: float = 0.2,
                        lr: float = 1e-3, num_envs: int = 8, num_steps: int = 32, gamma: float = 0.98,
                        lam: float = 0.8, minibatch_size: int = 256, max_grad_norm: float | None = 0.5,
                        hidden: int = 64) -> dict:
    """Optimise L^{CLIP+VF+S} for ``epochs`` epochs on a single batch, as PPO would with a huge ``epochs``.

    A fresh policy collects one batch of ``num_envs * num_steps`` steps; after each epoch the
    returned arrays hold ``kl`` (exact mean KL[pi_old || pi] over the batch's states) and
    ``outside`` (the fraction of samples whose ratio r_t lies outside [1 - eps, 1 + eps]) and
    ``ratio_max`` (the largest r_t).
    """
    check_train_args(num_envs * num_steps, num_envs, num_steps, gamma, lam)
    check_ppo_args(epochs, minibatch_size, eps, max_grad_norm, lr)
    seed_everything(seed)
    runner = Runner(env_id, num_envs, seed, gamma, History())
    net = ActorCritic(CategoricalPolicy(runner.obs_dim, runner.n_actions, hidden), ValueNet(runner.obs_dim, hidden))
    optimizer = make_optimizer(net, lr)
    batch = runner.rollout(net, net.value, num_steps)
    runner.close()
    adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, gamma, lam)
    obs, actions, logp_old, adv, ret = batch.flat(batch.obs, batch.actions, batch.logp, adv, ret)
    with torch.no_grad():
        old = net(obs)[0]
        logp_old = old.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # the same forward as below
    kl, outside, ratio_max = [], [], []
    for _ in range(epochs):
        update(net, optimizer, obs, actions, logp_old, adv, ret, epochs=1, minibatch_size=minibatch_size,
               eps=eps, max_grad_norm=max_grad_norm)
        with torch.no_grad():
            new = net(obs)[0]
            r = torch.exp(new.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - logp_old)
            kl.append(categorical_kl(old, new).item())
            outside.append(((r - 1).abs() > eps).float().mean().item())
            ratio_max.append(r.max().item())
    return {"kl": np.array(kl), "outside": np.array(outside), "ratio_max": np.array(ratio_max)}
