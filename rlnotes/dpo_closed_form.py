"""Chapter 5: DPO where everything is exact, a "language model" that emits one token out of K.

The KL-regularised RLHF objective max_pi E[r(x, y)] - beta KL[pi(.|x) || pi_ref(.|x)] (DPO paper,
Eq. 3: ``rlhf_objective``) has the closed-form optimum (Eq. 4)

    pi_r(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x),   Z(x) = sum_y pi_ref(y|x) exp(r(x, y) / beta),

(``optimal_policy``, ``log_optimal_policy`` and ``log_partition``). ``fit_categorical`` minimises
the DPO loss (``rlnotes.dpo.dpo_loss``, Eq. 7) of a one-token model on labelled pairs, to set beside
that optimum; ``check_token_pairs`` checks the inputs of such a one-token problem.
"""

from __future__ import annotations

import numpy as np
import torch

from .dpo import dpo_loss
from .trainer import MAX_EPOCHS, check_count
from .utils import check_finite, check_positive, check_positive_int, check_same_shape

__all__ = ["log_partition", "log_optimal_policy", "optimal_policy", "rlhf_objective", "check_token_pairs",
           "fit_categorical"]


# ---------------------------------------------------------------------------------------------
# The optimal policy and its partition function (DPO paper, Eq. 4 and Appendix A.1)
# ---------------------------------------------------------------------------------------------

def _logsumexp(z, axis=-1):
    if torch.is_tensor(z):
        return torch.logsumexp(z, dim=axis)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def _log(p):
    if torch.is_tensor(p):
        return torch.log(p)
    with np.errstate(divide="ignore"):
        return np.log(p)


def _check_distribution(name: str, probs) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``probs`` is finite, >= 0 and sums to 1 (within 1e-5)
    over its last axis."""
    check_finite(name, probs.detach() if torch.is_tensor(probs) else probs)
    if bool((probs < 0).any()):
        raise ValueError(f"{name} must be >= 0 (a distribution over the last axis)")
    total = probs.detach().sum(-1) if torch.is_tensor(probs) else probs.sum(-1)
    if bool((abs(total - 1) > 1e-5).any()):
        raise ValueError(f"{name} must sum to 1 over the last axis (a distribution over responses), "
                         f"got sums from {float(total.min()):.6g} to {float(total.max()):.6g}")


def _as_numbers(name: str, value):
    """``value`` as it is if a tensor, else as a float64 array; ``TypeError`` naming ``name`` for what is
    not numbers."""
    if torch.is_tensor(value):
        return value
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers, got {type(value).__name__} {value!r:.60}") from None


def _check_problem(ref_probs, rewards, beta):
    beta = check_positive("beta", beta)
    ref_probs, rewards = _as_numbers("ref_probs", ref_probs), _as_numbers("rewards", rewards)
    check_same_shape(ref_probs=ref_probs, rewards=rewards)
    if ref_probs.ndim < 1 or ref_probs.shape[-1] < 1:
        raise ValueError(f"ref_probs must have a non-empty last axis (the responses), got shape {tuple(ref_probs.shape)}")
    check_finite("rewards", rewards)
    _check_distribution("ref_probs", ref_probs)
    return ref_probs, rewards, beta


def _scaled_rewards(rewards, beta: float):
    """r / beta, or ``ValueError`` naming ``beta`` where it overflows (a beta so small that r / beta is inf)."""
    with np.errstate(over="ignore"):  # refused just below, with a message naming beta
        scaled = rewards / beta
    finite = torch.isfinite(scaled.detach()).all() if torch.is_tensor(scaled) else np.isfinite(scaled).all()
    if not bool(finite):
        raise ValueError(f"beta must be large enough that rewards / beta is finite, got beta={beta!r} "
                         f"(rewards / beta overflows; max |reward| = {float(abs(rewards).max()):.6g})")
    return scaled


def log_partition(ref_probs, rewards, beta: float):
    """log Z(x) = log sum_y pi_ref(y|x) exp(r(x, y) / beta), over the last axis (DPO paper, Eq. 4).

    Computed as logsumexp(log pi_ref + r / beta), so it stays finite for large r / beta.
    NumPy arrays in, NumPy out; torch tensors in, torch out (differentiable).
    """
    ref_probs, rewards, beta = _check_problem(ref_probs, rewards, beta)
    return _logsumexp(_log(ref_probs) + _scaled_rewards(rewards, beta))


def log_optimal_policy(ref_probs, rewards, beta: float):
    """log pi_r(y|x) = log pi_ref(y|x) + r(x, y) / beta - log Z(x) over the last axis (Eq. 4, in logs)."""
    ref_probs, rewards, beta = _check_problem(ref_probs, rewards, beta)
    z = _log(ref_probs) + _scaled_rewards(rewards, beta)
    log_z = _logsumexp(z)
    return z - (log_z[..., None] if log_z.ndim else log_z)


def optimal_policy(ref_probs, rewards, beta: float):
    """pi_r(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x) over the last axis (DPO paper, Eq. 4).

    The maximiser of E_{y~pi}[r(x, y)] - beta KL[pi(.|x) || pi_ref(.|x)] for every prompt x
    (one row per prompt). Computed in log space, so it is exact for large r / beta.
    """
    logp = log_optimal_policy(ref_probs, rewards, beta)
    return torch.exp(logp) if torch.is_tensor(logp) else np.exp(logp)


def rlhf_objective(policy_probs, ref_probs, rewards, beta: float):
    """E_{y~pi}[r(x, y)] - beta KL[pi(.|x) || pi_ref(.|x)] per prompt, over the last axis (DPO paper, Eq. 3).

    The objective that ``optimal_policy`` maximises, where it equals beta log Z(x) (``log_partition``).
    ``policy_probs`` may carry leading axes of its own (many policies at once); a response with
    pi(y) = 0 adds exactly 0 (0 log 0 = 0). NumPy arrays in, NumPy out; a torch tensor ``policy_probs``
    gives a torch result, differentiable in it (the other two are converted to its dtype).
    ``policy_probs`` and ``ref_probs`` must be distributions over the last axis (finite, >= 0,
    summing to 1 within 1e-5), else ``ValueError`` naming the argument.
    """
    ref_probs, rewards, beta = _check_problem(ref_probs, rewards, beta)
    if torch.is_tensor(policy_probs):
        ref_probs, rewards = (torch.as_tensor(a, dtype=policy_probs.dtype) for a in (ref_probs, rewards))
    else:
        policy_probs = np.asarray(policy_probs, dtype=float)
        ref_probs, rewards = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if tuple(policy_probs.shape[policy_probs.ndim - ref_probs.ndim:]) != tuple(ref_probs.shape):
        raise ValueError(f"policy_probs must end with the shape of ref_probs {tuple(ref_probs.shape)}, "
                         f"got {tuple(policy_probs.shape)}")
    _check_distribution("policy_probs", policy_probs)
    # pi(y) log(pi(y) / pi_ref(y)), 0 where pi(y) = 0; the logs only see the entries where pi(y) > 0,
    # so that no NaN reaches the value or, through the branch not taken, the gradient
    xp = torch if torch.is_tensor(policy_probs) else np
    seen = policy_probs > 0
    one = xp.ones_like(policy_probs)
    safe_p, safe_ref = xp.where(seen, policy_probs, one), xp.where(seen, ref_probs * one, one)
    with np.errstate(divide="ignore"):
        kl_terms = xp.where(seen, policy_probs * (xp.log(safe_p) - xp.log(safe_ref)), 0 * one)
    return (policy_probs * rewards).sum(-1) - beta * kl_terms.sum(-1)


# ---------------------------------------------------------------------------------------------
# DPO on a one-token model, where pi* is exact (chapter 5, section 5.4)
# ---------------------------------------------------------------------------------------------

def check_token_pairs(ref_probs, winners, losers, atol: float = 1e-8) -> tuple:
    """The inputs of a one-token problem (``fit_categorical``, ``rlnotes.ipo.fit_bandit``), checked:
    ``ref_probs`` a distribution over K >= 2 tokens, finite, every entry > 0 and summing to 1 within
    ``atol``; ``winners`` and ``losers`` non-empty 1-D integer (not bool) arrays of one length, of
    tokens in [0, K). ``ValueError`` naming them otherwise. Returns ``ref_probs`` as a float64 NumPy
    array and ``winners``, ``losers`` as tensors.
    """
    ref = np.asarray(ref_probs, dtype=float)
    if ref.ndim != 1 or ref.size < 2 or not np.isfinite(ref).all() or (ref <= 0).any() or abs(ref.sum() - 1) > atol:
        raise ValueError(f"ref_probs must be a distribution over K >= 2 tokens with every entry > 0 "
                         f"(summing to 1 within {atol:g}), got {ref}")
    y_w, y_l = (torch.as_tensor(np.asarray(y)) for y in (winners, losers))
    if y_w.shape != y_l.shape or y_w.ndim != 1 or len(y_w) == 0 \
            or any(y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool for y in (y_w, y_l)):
        raise ValueError("winners and losers must be non-empty 1-D integer arrays of one length, got "
                         f"{y_w.dtype} {tuple(y_w.shape)} and {y_l.dtype} {tuple(y_l.shape)}")
    if min(y_w.min(), y_l.min()) < 0 or max(y_w.max(), y_l.max()) >= ref.size:
        raise ValueError(f"winners and losers must be tokens in [0, {ref.size - 1}]")
    return ref, y_w, y_l


def fit_categorical(ref_probs, winners, losers, beta: float, *, epochs: int = 5, batch_size: int = 1000,
                      lr: float = 0.05, seed: int = 0) -> np.ndarray:
    """Minimise Eq. 7 for a "language model" that emits one token out of K: pi_theta = softmax(theta).

    ``theta`` starts at log pi_ref (``ref_probs``, [K]); each of ``epochs`` passes over the labelled
    pairs (``winners`` y_w and ``losers`` y_l, integer arrays of one shape) takes one Adam step (``lr``,
    decayed linearly to 0) per mini-batch of ``batch_size`` pairs, in an order drawn from ``seed``.
    Nothing here knows the reward that labelled the pairs, or Z. Returns pi_theta after every step,
    [steps, K] (float64), to compare with ``optimal_policy(ref_probs, r, beta)``. ``epochs`` is at most
    ``trainer.MAX_EPOCHS`` (ValueError).
    """
    beta = check_positive("beta", beta)
    ref, y_w, y_l = check_token_pairs(ref_probs, winners, losers)
    epochs = check_count("epochs", epochs, MAX_EPOCHS, "MAX_EPOCHS")
    batch_size = check_positive_int("batch_size", batch_size)
    lr, seed = check_positive("lr", lr), check_positive_int("seed", seed, 0)
    log_ref = torch.log(torch.tensor(ref))
    theta = log_ref.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=lr)
    steps = epochs * -(-len(y_w) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    order = torch.Generator().manual_seed(seed)
    probs = []
    for _ in range(epochs):
        for idx in torch.randperm(len(y_w), generator=order).split(batch_size):
            logp = torch.log_softmax(theta, -1)
            loss = dpo_loss(logp[y_w[idx]], logp[y_l[idx]], log_ref[y_w[idx]], log_ref[y_l[idx]], beta)[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            probs.append(torch.softmax(theta, -1).detach().numpy())
    return np.stack(probs)
