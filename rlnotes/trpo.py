"""Chapter 2: trust region policy optimisation (Schulman et al. 2015, "TRPO").

Each update solves, approximately,

    maximise_theta  L(theta) = E_t[ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ]
    subject to      KL_bar(theta) = E_t[ KL[pi_old(.|s_t) || pi_theta(.|s_t)] ] <= delta

by the recipe of the paper's Appendix C:

1. g = grad L at theta_old (the chapter 1 policy gradient, since grad ratio = grad log pi there);
2. s ~= F^{-1} g by ``conjugate_gradient``, where F is the Fisher matrix, the Hessian of KL_bar
   at theta_old, touched only through Fisher-vector products (``fisher_vector_product``);
3. the full step beta * s with beta = sqrt(2 delta / s^T F s), which reaches KL = delta on the
   quadratic model of the KL;
4. ``line_search``: shrink the step until L improves and the *measured* KL_bar is <= delta;
   if no step qualifies, the policy stays where it was.

``trpo_step`` is one such update, ``train`` runs it on gymnasium environments.
"""

from __future__ import annotations

import math
import reprlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.distributions import Categorical
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .kl import mean_kl
from .nets import CategoricalPolicy, ValueNet, check_batch, fit_value
from .returns import advantage_batch
from .rollout import ControlConfig, Runner
from .trainer import History, Timer, TrainResult, atomic, make_config, progress, run_guard, training_scope
from .utils import check_finite, check_in_range, check_positive, check_positive_int, check_same_shape, check_tensor


def conjugate_gradient(Avp: Callable, b, iters: int = 10, tol: float = 1e-10, residuals: list | None = None):
    """Solve A x = b for a symmetric positive-definite A known only through ``Avp(v) = A v``.

    Conjugate gradient (Hestenes & Stiefel 1952; TRPO paper, Appendix C), started at x = 0: at
    most ``iters`` matrix-vector products, stopping early once the squared residual
    ``r^T r = ||b - A x||^2`` is at most ``tol``. Works on a NumPy array or a torch vector ``b``;
    ``Avp`` must be a function returning a finite vector of ``b``'s shape (``TypeError`` /
    ``ValueError`` naming it otherwise). If
    ``residuals`` is a list, r^T r is appended before the first iteration and after each one.
    """
    if not callable(Avp):
        raise TypeError(f"Avp must be a function v -> A v, got {type(Avp).__name__} {reprlib.repr(Avp)}")
    iters = check_positive_int("iters", iters)
    tol = check_in_range("tol", tol, 0.0, math.inf)
    check_finite("b", b)
    b = b.detach().clone() if torch.is_tensor(b) else np.array(b, dtype=float)
    x, r, p = b * 0, b, b
    rr = float(r @ r)
    if residuals is not None:
        residuals.append(rr)
    for _ in range(iters):
        if rr <= tol:
            break
        Ap = Avp(p)
        if tuple(np.shape(Ap)) != tuple(np.shape(b)):
            raise ValueError(f"Avp must return a vector of b's shape {tuple(np.shape(b))}, "
                             f"got shape {tuple(np.shape(Ap))}")
        check_finite("Avp(p)", Ap)
        pAp = float(p @ Ap)
        if not pAp > 0:
            raise ValueError(f"A is not positive definite: p^T A p = {pAp:.3g} <= 0 (add damping)")
        alpha = rr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        if residuals is not None:
            residuals.append(rr)
    return x


def surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """L(theta) = mean_t[ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ], the sample form of TRPO's eq. (14).

    At theta = theta_old the ratio is 1 and its gradient is grad log pi, so grad L = the chapter 1
    policy gradient g. Inputs are the log-probabilities of the taken actions under pi_theta and pi_old.
    Refused (``ValueError``, naming the argument): shapes that differ, no sample, NaN or inf.
    """
    for name, t in (("logp", logp), ("logp_old", logp_old), ("advantages", advantages)):
        check_tensor(name, t)
    check_same_shape(logp=logp, logp_old=logp_old, advantages=advantages)
    if logp.numel() == 0:
        raise ValueError("logp must hold at least one sample, got an empty tensor (the mean would be NaN)")
    for name, t in (("logp", logp), ("logp_old", logp_old), ("advantages", advantages)):
        check_finite(name, t.detach())
    return (torch.exp(logp - logp_old) * advantages).mean()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _trainable(policy) -> list[torch.Tensor]:
    """The parameters of ``policy`` that require a gradient; ``ValueError`` if there are none."""
    if not isinstance(policy, torch.nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module (a CategoricalPolicy), got {type(policy).__name__}")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy has no parameter with requires_grad=True: a frozen policy cannot take a TRPO step "
                         "(call policy.requires_grad_(True))")
    return params


def fisher_vector_product(policy: CategoricalPolicy, obs: torch.Tensor, damping: float = 0.1) -> Callable:
    """Return v -> (F + damping * I) v, with F the Fisher matrix of ``policy`` on the states ``obs``.

    F is the Hessian of KL_bar(theta) = mean_s KL[pi_old(.|s) || pi_theta(.|s)] at theta = theta_old
    (pi_old is the policy as it is now, frozen). It is never formed: double backprop gives
    F v = grad_theta( grad_theta KL_bar . v ), one backward pass per product (Pearlmutter 1994).
    ``damping`` adds lambda * I, which keeps conjugate gradient stable where F is (near) singular.
    """
    damping = check_in_range("damping", damping, 0.0, math.inf)
    params = _trainable(policy)
    check_batch(policy, obs)
    n = sum(p.numel() for p in params)
    dist = policy(obs)
    old = Categorical(logits=dist.logits.detach())  # pi_old: the policy now, frozen
    grad_kl = _flat(torch.autograd.grad(mean_kl(old.logits, dist.logits), params, create_graph=True))

    def Fvp(v: torch.Tensor) -> torch.Tensor:
        check_tensor("v", v)
        if tuple(v.shape) != (n,):
            raise ValueError(f"v must be a vector of the policy's {n} trainable parameters, got shape {tuple(v.shape)}")
        hv = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
        return _flat(hv) + damping * v

    return Fvp


def _check_shrink(shrink) -> float:
    shrink = check_in_range("shrink", shrink, 0.0, 1.0)
    if shrink in (0.0, 1.0):
        raise ValueError(f"shrink must be strictly between 0 and 1, got {shrink}")
    return shrink


@dataclass
class LineSearchResult:
    """Outcome of ``line_search``: the step taken (zero if rejected), what was measured for it, and
    ``trials``, the (improvement, kl) measured at every step tried, the full step first."""

    step: object
    accepted: bool
    backtracks: int
    improvement: float
    kl: float
    trials: list


def _two_numbers(out) -> tuple[float, float]:
    try:
        improvement, kl = (float(v) for v in out)
    except (TypeError, ValueError):
        raise TypeError(f"evaluate must return two numbers (improvement, kl), got {reprlib.repr(out)}") from None
    return improvement, kl


def line_search(evaluate: Callable, full_step, delta: float, max_backtracks: int = 10,
                shrink: float = 0.8) -> LineSearchResult:
    """Backtracking line search on the trust region (TRPO paper, Appendix C).

    Tries ``full_step * shrink**i`` for i = 0, 1, ..., max_backtracks - 1; ``evaluate(step)``
    returns (surrogate improvement L(theta_old + step) - L(theta_old), measured mean KL). The first
    step with improvement > 0 and KL <= ``delta`` (both finite) is accepted, and ``backtracks`` is
    its i. If none qualifies the step is zero, ``accepted`` is False and ``backtracks`` is
    ``max_backtracks``.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a function step -> (improvement, kl), got {type(evaluate).__name__}")
    delta = check_positive("delta", delta)
    max_backtracks = check_positive_int("max_backtracks", max_backtracks)
    shrink = _check_shrink(shrink)
    check_finite("full_step", full_step)
    trials = []
    for i in range(max_backtracks):
        step = full_step * shrink ** i
        improvement, kl = _two_numbers(evaluate(step))
        trials.append((improvement, kl))
        if math.isfinite(improvement) and math.isfinite(kl) and improvement > 0 and kl <= delta:
            return LineSearchResult(step, True, i, improvement, kl, trials)
    return LineSearchResult(full_step * 0, False, max_backtracks, 0.0, 0.0, trials)


def trpo_step(policy: CategoricalPolicy, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
              delta: float = 0.01, *, cg_iters: int = 10, damping: float = 0.1, max_backtracks: int = 10,
              shrink: float = 0.8) -> dict:
    """One TRPO update of ``policy`` in place, on a batch of (state, action, advantage).

    pi_old is the policy as it is when called. Returns floats under their log keys:
    ``kl/exact_per_state`` (measured mean KL of the step taken, 0 if rejected), ``improvement``
    (surrogate gain), ``backtracks``, ``accepted`` (1.0 or 0.0), ``kl/exact_per_state_full_step``
    (the KL measured at the full step, which the
    quadratic model puts at delta or a little below, as damping shortens the step), ``cg_iters``
    (products used by CG), ``cg_residual`` (its final r^T r) and ``step_size``
    (beta = sqrt(2 delta / s^T (F + damping I) s)).

    Cost, counted in passes through the policy network: 2 forward passes (surrogate, KL graph),
    plus one per line-search trial; backward passes: 1 (grad L) + 1 (grad KL, kept for double
    backprop) + ``cg_iters`` (CG's products) + 1 (s^T F s).

    Refused, naming the argument: a ``policy`` with no trainable parameter, a batch that
    ``rlnotes.nets.check_batch`` refuses (``obs`` [n, obs_dim] finite, ``actions`` integers in
    [0, n_actions)), ``advantages`` of another shape than ``actions`` or not finite.
    """
    delta = check_positive("delta", delta)
    cg_iters = check_positive_int("cg_iters", cg_iters)
    damping = check_in_range("damping", damping, 0.0, math.inf)
    max_backtracks = check_positive_int("max_backtracks", max_backtracks)
    shrink = _check_shrink(shrink)
    params = _trainable(policy)
    check_batch(policy, obs, actions)
    check_tensor("advantages", advantages)
    check_finite("advantages", advantages)
    check_same_shape(actions=actions, advantages=advantages)
    dist = policy(obs)
    logp_old = dist.log_prob(actions).detach()
    old = Categorical(logits=dist.logits.detach())
    surr_old = surrogate(dist.log_prob(actions), logp_old, advantages)
    g = _flat(torch.autograd.grad(surr_old, params))
    Fvp = fisher_vector_product(policy, obs, damping)
    residuals: list[float] = []
    s = conjugate_gradient(Fvp, g, cg_iters, 1e-10, residuals)
    sFs = float(s @ Fvp(s))
    beta = math.sqrt(2 * delta / sFs) if sFs > 0 else 0.0
    theta_old = parameters_to_vector(params).detach()

    @torch.no_grad()
    def evaluate(step):
        vector_to_parameters(theta_old + step, params)
        new = policy(obs)
        return ((surrogate(new.log_prob(actions), logp_old, advantages) - surr_old).item(),
                mean_kl(old.logits, new.logits).item())

    step = 0 * theta_old
    try:
        result = line_search(evaluate, beta * s, delta, max_backtracks, shrink)
        step = result.step
    finally:  # the accepted step, or theta_old when rejected or interrupted mid-search
        with torch.no_grad():
            vector_to_parameters(theta_old + step, params)
    return {"kl/exact_per_state": result.kl, "kl/exact_per_state_full_step": result.trials[0][1],
            "improvement": result.improvement, "backtracks": result.backtracks, "accepted": float(result.accepted),
            "cg_iters": len(residuals) - 1, "cg_residual": residuals[-1], "step_size": beta}


@contextmanager
def count_passes(module: torch.nn.Module):
    """Count forward and backward passes through ``module`` inside a ``with`` block.

    Yields a dict {"forward": n, "backward": m}, updated live. A forward pass is a call of the
    module; a backward pass is a gradient computation that reaches its first parameter (by
    ``backward`` or ``torch.autograd.grad``, double backprop included).
    """
    counts = {"forward": 0, "backward": 0}

    def on_forward(*_):
        counts["forward"] += 1

    def on_backward(grad):
        counts["backward"] += 1

    handles = [module.register_forward_hook(on_forward), next(module.parameters()).register_hook(on_backward)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True, kw_only=True)
class TRPOConfig(ControlConfig):
    """TRPO: KL bound ``delta``; ``cg_iters`` conjugate-gradient products with ``damping``; a line
    search of at most ``max_backtracks`` trials shrinking by ``shrink``; the value function fitted
    with ``vf_iters`` full-batch Adam steps at ``vf_lr``."""

    lam: float = 0.98
    delta: float = 0.01
    cg_iters: int = 10
    damping: float = 0.1
    max_backtracks: int = 10
    shrink: float = 0.8
    vf_lr: float = 3e-3
    vf_iters: int = 20

    def __post_init__(self):
        super().__post_init__()
        self.check("delta", check_positive)
        self.check("cg_iters", check_positive_int)
        self.check("damping", check_in_range, 0.0, math.inf)
        self.check("max_backtracks", check_positive_int)
        object.__setattr__(self, "shrink", _check_shrink(self.shrink))
        self.check("vf_lr", check_positive)
        self.check("vf_iters", check_positive_int)


def train(env_id: str = "CartPole-v1", config: TRPOConfig | None = None, **overrides) -> TrainResult:
    """TRPO: each batch of ``num_envs * num_steps`` steps gives one ``trpo_step`` with KL bound ``delta``.

    Arguments: those of ``TRPOConfig`` (``total_steps`` and ``seed`` are required), or a ``config``.
    Advantages come from GAE (``lam``) with a value function fitted by regression, as in chapter 1.

    ``damping`` sets how cautious the full step is: at 0.1 (sb3-contrib's default) it usually
    stops a little short of the KL boundary and the line search rarely backtracks; smaller damping
    follows F^{-1} g more closely, overshoots delta more often (the line search corrects that)
    and, on CartPole-v1, learned less steadily in our runs, with larger falls of the return (the
    KL is measured on the batch's states only).

    Returns a ``TrainResult`` (``model`` the policy, ``value_fn``). Logs per update:
    ``env_steps``, ``kl/exact_per_state`` (measured mean KL[pi_old || pi_new] on the batch's
    states, exact over actions; 0 when the step is rejected), ``kl/exact_per_state_full_step``
    (the same at the untested full step), ``improvement``, ``backtracks``, ``accepted``,
    ``cg_iters``, ``cg_residual``, ``step_size``, ``entropy``, ``loss/value`` and ``seconds``.
    """
    cfg = make_config(TRPOConfig, config, **overrides)
    history = History()
    result, runner = TrainResult(None, history, cfg), None  # the networks once they exist
    # the guard first: a Ctrl-C while the environments are made and reset also gives TrainingInterrupted
    with run_guard(lambda: result, lambda: runner is not None and runner.close()), training_scope(cfg.seed):
        runner = Runner(env_id, cfg.num_envs, cfg.seed, cfg.gamma, history)
        policy = CategoricalPolicy(runner.obs_dim, runner.n_actions, cfg.hidden)
        value_fn = ValueNet(runner.obs_dim, cfg.hidden)
        vf_opt = torch.optim.Adam(value_fn.parameters(), lr=cfg.vf_lr)
        result = TrainResult(policy, history, cfg, value_fn)
        for _ in progress(range(cfg.updates), cfg.progress, desc="trpo"):
            with atomic():
                with Timer() as timer:
                    batch = runner.rollout(policy, value_fn, cfg.num_steps)
                    obs, actions, adv, ret = advantage_batch(batch, cfg.gamma, cfg.lam, cfg.normalize_advantages)
                    with torch.no_grad():
                        entropy = policy(obs).entropy().mean().item()
                    info = trpo_step(policy, obs, actions, adv, cfg.delta, cg_iters=cfg.cg_iters,
                                     damping=cfg.damping, max_backtracks=cfg.max_backtracks, shrink=cfg.shrink)
                    v_loss = fit_value(value_fn, vf_opt, obs, ret, cfg.vf_iters)
                history.log({"env_steps": runner.steps, **info, "entropy": entropy, "loss/value": v_loss,
                             "seconds": timer.seconds})
    return result
