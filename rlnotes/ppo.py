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
import reprlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .actor_critic import ActorCritic, clip_grad_norm, make_optimizer
from .kl import k3, mean_kl
from .nets import CategoricalPolicy, ValueNet, check_batch, value_loss
from .returns import gae, normalize
from .rollout import ControlConfig, Runner
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, make_config, progress, run_guard,
                      training_scope)
from .utils import (check_finite, check_in_range, check_positive, check_positive_int, check_seed, check_same_shape,
                    check_tensor)


def _as_tensor(name: str, value, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` as a tensor (a tensor, or an array-like of numbers), else ``TypeError`` naming ``name``."""
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or an array-like of numbers, got {type(value).__name__} "
                        f"{reprlib.repr(value)}") from None


def ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(log pi_theta - log pi_theta_old) (eq. 6).

    ``logp`` and ``logp_old``: tensors or array-likes of one shape, finite (``ValueError`` otherwise)."""
    logp, logp_old = _as_tensor("logp", logp), _as_tensor("logp_old", logp_old)
    check_same_shape(logp=logp, logp_old=logp_old)
    check_finite("logp", logp.detach())
    check_finite("logp_old", logp_old.detach())
    return torch.exp(logp - logp_old)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps: float) -> torch.Tensor:
    """The per-sample clipped objective of eq. 7, min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t).

    This is the quantity to *maximise* (its mean is L^CLIP). Inputs may be tensors or array-likes
    of one shape, finite; ``eps`` must be finite and > 0 (``ValueError`` otherwise).
    """
    eps = check_positive("eps", eps)
    ratio = _as_tensor("ratio", ratio)
    advantages = _as_tensor("advantages", advantages, ratio.dtype if ratio.is_floating_point() else None)
    check_same_shape(ratio=ratio, advantages=advantages)
    check_finite("ratio", ratio.detach())
    check_finite("advantages", advantages.detach())
    return torch.min(ratio * advantages, ratio.clamp(1.0 - eps, 1.0 + eps) * advantages)


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """E_t[(r_t - 1) - log r_t], the k3 estimator of KL[pi_old || pi_theta] (``rlnotes.kl.k3``) averaged
    over the samples: >= 0 sample by sample and unbiased. ``log_ratio`` is log r_t = log pi_theta - log pi_old,
    finite, with at least one sample (``ValueError`` otherwise)."""
    log_ratio = _as_tensor("log_ratio", log_ratio)
    check_finite("log_ratio", log_ratio.detach())
    if log_ratio.numel() == 0:
        raise ValueError("log_ratio must hold at least one sample, got an empty tensor")
    return k3(torch.zeros_like(log_ratio), log_ratio).mean()


class PPOLoss(NamedTuple):
    """The scalar loss to minimise and its parts, all detached except ``loss``."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor | None = None, eps: float = 0.2, vf_coef: float = 1.0,
             ent_coef: float = 0.0, diagnostics: bool = True) -> PPOLoss:
    """-L^{CLIP+VF+S} of eq. 9: -L^CLIP + c_1 L^VF - c_2 E_t[S[pi](s_t)], with L^VF = 1/2 E_t[(V(s_t) - V^targ_t)^2].

    ``logp`` (log pi_theta(a_t|s_t), with gradient), ``logp_old``, ``advantages``, ``values``
    (V(s_t), with gradient), ``returns`` (the targets V^targ_t) and ``entropy`` (S per state) are
    float tensors (``TypeError`` naming the argument otherwise) of one length (>= 1), finite;
    ``entropy`` may be None when ``ent_coef`` is 0 (then reported as nan). The value loss is
    ``rlnotes.nets.value_loss``, the half squared error, so c_1 = 1 here is SB3's and RL Zoo's
    c_1 = 0.5 on the plain squared error. Also returned, for
    logging: the approximate KL E_t[(r - 1) - log r] (k3) and the fraction of samples whose ratio
    lies outside [1 - eps, 1 + eps]; with ``diagnostics=False`` (``update``, but for its last
    minibatch) these two are None and not computed.
    """
    eps = check_positive("eps", eps)
    vf_coef = check_in_range("vf_coef", vf_coef, 0.0, math.inf)
    ent_coef = check_in_range("ent_coef", ent_coef, 0.0, math.inf)
    if entropy is None and ent_coef > 0:
        raise ValueError(f"entropy is needed when ent_coef > 0, got ent_coef={ent_coef}")
    tensors = dict(logp=logp, logp_old=logp_old, advantages=advantages, values=values, returns=returns,
                   **({} if entropy is None else {"entropy": entropy}))
    for name, t in tensors.items():
        check_tensor(name, t)
    check_same_shape(**tensors)
    for name, t in tensors.items():
        check_finite(name, t.detach())
    if logp.numel() == 0:
        raise ValueError("logp must hold at least one sample, got an empty tensor")
    log_ratio = logp - logp_old
    r = torch.exp(log_ratio)
    policy_loss = -clipped_surrogate(r, advantages, eps).mean()
    v_loss = value_loss(values, returns)
    loss = policy_loss + vf_coef * v_loss
    entropy = torch.tensor(math.nan) if entropy is None else entropy.mean()
    if ent_coef > 0:
        loss = loss - ent_coef * entropy
    kl = clip_fraction = None
    if diagnostics:
        with torch.no_grad():
            kl = approx_kl(log_ratio)
            clip_fraction = ((r - 1.0).abs() > eps).float().mean()
    return PPOLoss(loss, policy_loss.detach(), v_loss.detach(), entropy.detach(), kl, clip_fraction)


@dataclass(frozen=True, kw_only=True)
class UpdateConfig(Config):
    """One PPO update: ``epochs`` passes over the batch in minibatches of ``minibatch_size``, clip
    range ``eps``, coefficients ``vf_coef`` (c_1) and ``ent_coef`` (c_2), gradient-norm clipping to
    ``max_grad_norm`` (None: none), advantages normalised per minibatch if ``normalize_advantages``."""

    epochs: int = 15
    minibatch_size: int = 256
    eps: float = 0.2
    vf_coef: float = 1.0
    ent_coef: float = 0.0
    max_grad_norm: float | None = 0.5
    normalize_advantages: bool = True

    def __post_init__(self):
        self.check("epochs", check_positive_int)
        self.check("minibatch_size", check_positive_int)
        self.check("eps", check_positive)
        self.check("vf_coef", check_in_range, 0.0, math.inf)
        self.check("ent_coef", check_in_range, 0.0, math.inf)
        self.check("max_grad_norm", check_positive)
        self.check("normalize_advantages", check_bool)


def update(net: ActorCritic, optimizer: torch.optim.Optimizer, obs: torch.Tensor, actions: torch.Tensor,
           logp_old: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, config: UpdateConfig | None = None,
           generator: torch.Generator | None = None, **kwargs) -> dict:
    """``epochs`` passes of minibatch gradient steps on ``ppo_loss`` over one batch of experience.

    Arguments: an ``UpdateConfig`` or its keyword arguments (``make_config``). The batch is
    reshuffled each epoch (``torch.randperm`` with ``generator``, None: torch's global one; no
    shuffle when one minibatch holds it all), the advantages are normalised per minibatch, and the
    gradient norm of all parameters is clipped to ``max_grad_norm``. Returns the last minibatch's
    loss terms. ``obs``, ``logp_old``, ``advantages`` and ``returns`` must be finite, ``obs`` [n, the
    network's input width] and ``actions`` integers in [0, n_actions) (``ValueError`` or ``TypeError``
    naming the argument otherwise: ``rlnotes.nets.check_batch``).
    """
    cfg = make_config(UpdateConfig, config, **kwargs)
    check_same_shape(actions=actions, logp_old=logp_old, advantages=advantages, returns=returns)
    for name, t in (("obs", obs), ("logp_old", logp_old), ("advantages", advantages), ("returns", returns)):
        check_finite(name, t)
    if len(obs) != len(actions) or len(actions) == 0:
        raise ValueError(f"obs and actions must hold the same number (>= 1) of samples, "
                         f"got {len(obs)} and {len(actions)}")
    check_batch(net, obs, actions)
    n = len(obs)
    params = list(net.parameters())
    actions = actions.unsqueeze(-1)
    single = cfg.minibatch_size >= n  # one minibatch per epoch: no shuffling, normalise once
    if single and cfg.normalize_advantages and n > 1:
        advantages = normalize(advantages)
    for epoch in range(cfg.epochs):
        order = None if single else torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.minibatch_size):
            idx = slice(None) if single else order[start:start + cfg.minibatch_size]
            adv = advantages[idx]
            if cfg.normalize_advantages and not single and adv.numel() > 1:
                adv = normalize(adv)
            last = epoch == cfg.epochs - 1 and start + cfg.minibatch_size >= n
            log_probs, values = net(obs[idx])
            logp = log_probs.gather(-1, actions[idx]).squeeze(-1)
            entropy = None
            if cfg.ent_coef > 0 or last:
                with torch.set_grad_enabled(cfg.ent_coef > 0 and torch.is_grad_enabled()):
                    entropy = -(log_probs.exp() * log_probs).sum(-1)
            out = ppo_loss(logp, logp_old[idx], adv, values, returns[idx], entropy, cfg.eps, cfg.vf_coef,
                           cfg.ent_coef, diagnostics=last)
            for p in params:  # optimizer.zero_grad(set_to_none=True), without its profiling hooks
                p.grad = None
            out.loss.backward()
            if cfg.max_grad_norm is not None:
                clip_grad_norm(params, cfg.max_grad_norm)
            optimizer.step()
    return {name: float(value.detach()) for name, value in out._asdict().items()}


@dataclass(frozen=True, kw_only=True)
class PPOConfig(ControlConfig, UpdateConfig):
    """PPO-Clip: the control arguments (``ControlConfig``), one update's (``UpdateConfig``), the
    learning rate ``lr``, linear annealing of the learning rate and of eps to 0 over
    ``total_steps`` (``anneal_lr``, ``anneal_eps``), and ``stop_return``: stop after the update in
    which the mean of the last 20 episode returns first reaches it (the schedules still use
    ``total_steps``)."""

    gamma: float = 0.98
    lam: float = 0.8
    lr: float = 2e-3
    anneal_lr: bool = True
    anneal_eps: bool = True
    stop_return: float | None = None

    def __post_init__(self):
        ControlConfig.__post_init__(self)
        UpdateConfig.__post_init__(self)
        self.check("lr", check_positive)
        self.check("anneal_lr", check_bool)
        self.check("anneal_eps", check_bool)
        self.check("stop_return", check_in_range, -math.inf, math.inf)

    def update_config(self, frac: float) -> UpdateConfig:
        """This update's ``UpdateConfig``: eps annealed by ``frac`` (the share of the budget left) if asked."""
        fields = {name: getattr(self, name) for name in UpdateConfig.__dataclass_fields__}
        return UpdateConfig(**{**fields, "eps": self.eps * frac if self.anneal_eps else self.eps})


def train(env_id: str = "CartPole-v1", config: PPOConfig | None = None, **overrides) -> TrainResult:
    """PPO-Clip (Algorithm 1 of the paper) on any gymnasium environment with a Discrete action space.

    Arguments: those of ``PPOConfig`` (``total_steps`` and ``seed`` are required), or a ``config``.
    Each iteration collects ``num_envs * num_steps`` steps with pi_theta_old, computes GAE(gamma,
    lam) advantages (truncated episodes bootstrap from V, as in ``rlnotes.rollout``), then runs
    ``update``: ``epochs`` passes of minibatch Adam steps on eq. 9. With ``anneal_lr`` /
    ``anneal_eps`` the learning rate and eps fall linearly to 0 over ``total_steps`` (the factor
    is 1 - steps done before the iteration / total_steps).

    The defaults are RL Baselines3 Zoo's tuned values for CartPole-v1 (gamma 0.98, lam 0.8,
    eps 0.2, c_1 0.5 on the plain squared error = 1 here, c_2 0, 8 environments) except three:
    512 steps per batch (as in chapters 1 and 2), split into 2 minibatches of 256 for 15 epochs,
    and a learning rate of 2e-3. That is 30 Adam steps per 512 environment steps where Zoo takes
    40 (20 epochs of one minibatch per 256 steps), at twice its learning rate; over seeds 0-29
    the median number of steps to a 20-episode mean return of 475 was 22 360
    (``bench/ppo_cartpole.py`` compares with SB3).

    Returns a ``TrainResult`` (``model`` the policy, ``value_fn``). Logs per update
    ``env_steps``, ``kl/exact_per_state`` (exact mean KL[pi_old || pi_new] over the batch's
    states), ``kl/k3_per_sample`` (the k3 estimate on the last minibatch: SB3's ``approx_kl``),
    ``clip_ratio/region_mean`` (the fraction of the last minibatch's ratios outside the clip
    range), ``loss/policy``, ``loss/value``, ``entropy``, ``learning_rate``, ``eps``, ``ratio_min``
    / ``ratio_max`` (the extreme r_t over the batch after the update) and ``seconds``.
    """
    cfg = make_config(PPOConfig, config, **overrides)
    history = History()
    runner = net = None

    def result():  # the packed weights copied back into the policy and the value network (None before they exist)
        policy, value_fn = net.unpack() if net is not None else (None, None)
        return TrainResult(policy, history, cfg, value_fn)

    # the guard first: a Ctrl-C while the environments are made and reset also gives TrainingInterrupted
    with run_guard(result, lambda: runner is not None and runner.close()), training_scope(cfg.seed):
        runner = Runner(env_id, cfg.num_envs, cfg.seed, cfg.gamma, history)
        net = ActorCritic(CategoricalPolicy(runner.obs_dim, runner.n_actions, cfg.hidden),
                          ValueNet(runner.obs_dim, cfg.hidden))
        optimizer = make_optimizer(net, cfg.lr)
        for _ in progress(range(cfg.updates), cfg.progress, desc="ppo"):
            frac = 1.0 - runner.steps / cfg.total_steps
            lr_now = cfg.lr * frac if cfg.anneal_lr else cfg.lr
            step_cfg = cfg.update_config(frac)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            with atomic():
                with Timer() as timer:
                    batch = runner.rollout(net, net.value, cfg.num_steps)
                    adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, cfg.gamma, cfg.lam)
                    obs, actions, logp_old, adv, ret = batch.flat(batch.obs, batch.actions, batch.logp, adv, ret)
                    with torch.no_grad():
                        old_log_probs = net(obs)[0]
                    stats = update(net, optimizer, obs, actions, logp_old, adv, ret, step_cfg)
                    with torch.no_grad():
                        new_log_probs = net(obs)[0]
                        kl = mean_kl(old_log_probs, new_log_probs)
                        r = torch.exp(new_log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - logp_old)
                history.log({"env_steps": runner.steps, "kl/exact_per_state": kl,
                             "kl/k3_per_sample": stats["approx_kl"],
                             "clip_ratio/region_mean": stats["clip_fraction"], "loss/policy": stats["policy_loss"],
                             "loss/value": stats["value_loss"], "entropy": stats["entropy"], "learning_rate": lr_now,
                             "eps": step_cfg.eps, "ratio_min": r.min(), "ratio_max": r.max(), "seconds": timer.seconds})
            if cfg.stop_return is not None and history.steps_to_reach(cfg.stop_return) < math.inf:
                break
    return result()


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


@dataclass(frozen=True, kw_only=True)
class OneBatchConfig(UpdateConfig):
    """``epochs_on_one_batch``: one batch of ``num_envs * num_steps`` steps, optimised for ``epochs``
    epochs (default 15, ``UpdateConfig``'s) at learning rate ``lr`` (no annealing)."""

    seed: int
    epochs: int  # keeps UpdateConfig's default, 15 (a dataclass field takes the inherited class attribute)
    lr: float = 1e-3
    num_envs: int = 8
    num_steps: int = 32
    gamma: float = 0.98
    lam: float = 0.8
    hidden: int = 64

    def __post_init__(self):
        UpdateConfig.__post_init__(self)
        self.check("seed", check_seed)
        for name in ("num_envs", "num_steps", "hidden"):
            self.check(name, check_positive_int)
        self.check("lr", check_positive)
        self.check("gamma", check_in_range, 0.0, 1.0)
        self.check("lam", check_in_range, 0.0, 1.0)


def epochs_on_one_batch(env_id: str = "CartPole-v1", config: OneBatchConfig | None = None,
                        **overrides) -> TrainResult:
    """Optimise L^{CLIP+VF+S} for ``epochs`` epochs on a single batch, as PPO would with a huge ``epochs``.

    Arguments: those of ``OneBatchConfig`` (``seed`` is required; ``epochs`` defaults to 15). A fresh policy
    collects one batch of ``num_envs * num_steps`` steps; the history logs after each epoch
    ``kl/exact_per_state`` (exact mean KL[pi_old || pi] over the batch's states), ``outside`` (the
    fraction of samples whose ratio r_t lies outside [1 - eps, 1 + eps]) and ``ratio_max`` (the
    largest r_t). Returns a ``TrainResult``.
    """
    cfg = make_config(OneBatchConfig, config, **overrides)
    history = History()
    with training_scope(cfg.seed):
        runner = Runner(env_id, cfg.num_envs, cfg.seed, cfg.gamma, History())
        net = ActorCritic(CategoricalPolicy(runner.obs_dim, runner.n_actions, cfg.hidden),
                          ValueNet(runner.obs_dim, cfg.hidden))
        optimizer = make_optimizer(net, cfg.lr)
        try:
            batch = runner.rollout(net, net.value, cfg.num_steps)
        finally:
            runner.close()
        adv, ret = gae(batch.rewards, batch.values, batch.dones, batch.last_value, cfg.gamma, cfg.lam)
        obs, actions, logp_old, adv, ret = batch.flat(batch.obs, batch.actions, batch.logp, adv, ret)
        with torch.no_grad():
            old = net(obs)[0]
            logp_old = old.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # the same forward as below
        one_epoch = UpdateConfig(**{**{k: getattr(cfg, k) for k in UpdateConfig.__dataclass_fields__}, "epochs": 1})
        for _ in range(cfg.epochs):
            update(net, optimizer, obs, actions, logp_old, adv, ret, one_epoch)
            with torch.no_grad():
                new = net(obs)[0]
                r = torch.exp(new.gather(-1, actions.unsqueeze(-1)).squeeze(-1) - logp_old)
                history.log({"kl/exact_per_state": mean_kl(old, new), "outside": ((r - 1).abs() > cfg.eps).float().mean(),
                             "ratio_max": r.max()})
    policy, value_fn = net.unpack()
    return TrainResult(policy, history, cfg, value_fn)
