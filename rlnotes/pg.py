"""Chapter 1: the policy gradient.

The score-function estimator g = E_t[ grad_theta log pi_theta(a_t|s_t) A_t ] is the gradient
of the loss L^PG(theta) = E_t[ log pi_theta(a_t|s_t) A_t ] with the advantages held fixed.
``pg_loss`` is its negative, so that an optimiser that *minimises* ascends L^PG.
``train`` is vanilla policy gradient (REINFORCE with a learned baseline): one gradient step
on L^PG per batch, advantages from GAE with a value function fitted by regression.
"""

from __future__ import annotations

import torch

from .nets import CategoricalPolicy, ValueNet, mean_kl
from .returns import gae
from .rollout import History, Runner, Timer
from .utils import check_in_range, check_positive, check_positive_int, check_same_shape, seed_everything


def pg_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-L^PG = -mean_t[ log pi_theta(a_t|s_t) * A_t ]; its gradient is minus the score-function estimate."""
    check_same_shape(logp=logp, advantages=advantages)
    return -(logp * advantages).mean()


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale the advantages to mean 0 and standard deviation 1 (a per-batch baseline)."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def fit_value(value_fn: ValueNet, optimizer: torch.optim.Optimizer, obs: torch.Tensor,
              returns: torch.Tensor, iters: int) -> float:
    """Regress V(s) on the returns for ``iters`` full-batch steps; returns the last squared error."""
    for _ in range(iters):
        loss = 0.5 * (value_fn(obs) - returns).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def advantage_batch(batch, gamma: float, lam: float, normalize_advantages: bool = True):
    """A rollout made ready for a policy update: GAE advantages and value targets
    (``rlnotes.returns.gae``), the time and environment axes merged, and the advantages
    normalised per batch if asked. Returns (obs, actions, advantages, returns)."""
    adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, gamma, lam)
    obs, actions, adv, ret = batch.flat(batch.obs, batch.actions, adv, ret)
    return obs, actions, normalize(adv) if normalize_advantages else adv, ret


def check_train_args(total_steps, num_envs, num_steps, gamma, lam):
    """Shared checks of the trainers' common arguments (chapters 1-3)."""
    check_positive_int("total_steps", total_steps)
    check_positive_int("num_envs", num_envs)
    check_positive_int("num_steps", num_steps)
    check_in_range("gamma", gamma, 0.0, 1.0)
    check_in_range("lam", lam, 0.0, 1.0)


def train(env_id: str = "CartPole-v1", *, total_steps: int, seed: int, lr: float = 3e-3,
          num_envs: int = 8, num_steps: int = 64, gamma: float = 0.99, lam: float = 1.0,
          vf_lr: float = 3e-3, vf_iters: int = 10, hidden: int = 64,
          normalize_advantages: bool = True) -> History:
    """Vanilla policy gradient: each batch of ``num_envs * num_steps`` steps gives one Adam step on -L^PG.

    The history logs per update: ``env_steps``, ``kl`` (mean KL[pi_old || pi_new] on the batch's
    states, exact over actions), ``entropy``, ``value_loss`` and ``seconds``.
    """
    check_train_args(total_steps, num_envs, num_steps, gamma, lam)
    check_positive("lr", lr)
    seed_everything(seed)
    history = History()
    runner = Runner(env_id, num_envs, seed, gamma, history)
    policy = CategoricalPolicy(runner.obs_dim, runner.n_actions, hidden)
    value_fn = ValueNet(runner.obs_dim, hidden)
    pi_opt = torch.optim.Adam(policy.parameters(), lr=lr)
    vf_opt = torch.optim.Adam(value_fn.parameters(), lr=vf_lr)
    while runner.steps < total_steps:
        with Timer() as timer:
            batch = runner.rollout(policy, value_fn, num_steps)
            obs, actions, adv, ret = advantage_batch(batch, gamma, lam, normalize_advantages)
            dist = policy(obs)
            loss = pg_loss(dist.log_prob(actions), adv)
            pi_opt.zero_grad()
            loss.backward()
            pi_opt.step()
            v_loss = fit_value(value_fn, vf_opt, obs, ret, vf_iters)
            with torch.no_grad():
                kl = mean_kl(dist, policy(obs))
        history.log(env_steps=runner.steps, kl=kl, entropy=dist.entropy().mean(),
                    value_loss=v_loss, seconds=timer.seconds)
    runner.close()
    history.policy = policy
    return history
