"""Chapter 1: the policy gradient.

The score-function estimator g = E_t[ grad_theta log pi_theta(a_t|s_t) A_t ] is the gradient
of the loss L^PG(theta) = E_t[ log pi_theta(a_t|s_t) A_t ] with the advantages held fixed.
``pg_loss`` is its negative, so that an optimiser that *minimises* ascends L^PG.
``train`` is vanilla policy gradient (REINFORCE with a learned baseline): one gradient step
on L^PG per batch, advantages from GAE with a value function fitted by regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kl import mean_kl
from .nets import CategoricalPolicy, ValueNet, fit_value
from .returns import advantage_batch
from .rollout import ControlConfig, Runner
from .trainer import History, Timer, TrainResult, atomic, make_config, progress, rng_scope, run_guard
from .utils import check_positive, check_positive_int, check_same_shape


def pg_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-L^PG = -mean_t[ log pi_theta(a_t|s_t) * A_t ]; its gradient is minus the score-function estimate."""
    check_same_shape(logp=logp, advantages=advantages)
    return -(logp * advantages).mean()


@dataclass(frozen=True, kw_only=True)
class PGConfig(ControlConfig):
    """Vanilla policy gradient: ``lr`` for the policy's Adam; the value function is fitted with
    ``vf_iters`` full-batch Adam steps at ``vf_lr`` per update."""

    lr: float = 3e-3
    vf_lr: float = 3e-3
    vf_iters: int = 10

    def __post_init__(self):
        super().__post_init__()
        self.check("lr", check_positive)
        self.check("vf_lr", check_positive)
        self.check("vf_iters", check_positive_int)


def train(env_id: str = "CartPole-v1", config: PGConfig | None = None, **kwargs) -> TrainResult:
    """Vanilla policy gradient: each batch of ``num_envs * num_steps`` steps gives one Adam step on -L^PG.

    Arguments: those of ``PGConfig`` (``total_steps`` and ``seed`` are required), or a ``config``.
    Returns a ``TrainResult`` (``model`` the policy, ``value_fn``). Logs per update:
    ``env_steps``, ``kl/exact_per_state`` (mean KL[pi_old || pi_new] over the batch's states,
    exact over the actions), ``entropy``, ``loss/value`` and ``seconds``.
    """
    cfg = make_config(PGConfig, config, **kwargs)
    history = History()
    with rng_scope(cfg.seed):
        runner = Runner(env_id, cfg.num_envs, cfg.seed, cfg.gamma, history)
        policy = CategoricalPolicy(runner.obs_dim, runner.n_actions, cfg.hidden)
        value_fn = ValueNet(runner.obs_dim, cfg.hidden)
        pi_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        vf_opt = torch.optim.Adam(value_fn.parameters(), lr=cfg.vf_lr)
        result = TrainResult(policy, history, cfg, value_fn)
        with run_guard(lambda: result, runner.close):
            for _ in progress(range(cfg.updates), cfg.progress, desc="pg"):
                with atomic():
                    with Timer() as timer:
                        batch = runner.rollout(policy, value_fn, cfg.num_steps)
                        obs, actions, adv, ret = advantage_batch(batch, cfg.gamma, cfg.lam, cfg.normalize_advantages)
                        dist = policy(obs)
                        loss = pg_loss(dist.log_prob(actions), adv)
                        pi_opt.zero_grad()
                        loss.backward()
                        pi_opt.step()
                        v_loss = fit_value(value_fn, vf_opt, obs, ret, cfg.vf_iters)
                        with torch.no_grad():
                            kl = mean_kl(dist.logits, policy(obs).logits)
                    history.log({"env_steps": runner.steps, "kl/exact_per_state": kl, "entropy": dist.entropy().mean(),
                                 "loss/value": v_loss, "seconds": timer.seconds})
    return result
