"""The KL divergence, in one place: exact over a finite set of outcomes, and the k1, k2, k3
sample estimators (Schulman, "Approximating KL divergence", 2020).

Every KL that rlnotes reports comes from here: the mean KL per state of chapters 1-3 (TRPO's
constraint, PPO's diagnostics), the per-token KL of chapter 4 and the estimators compared there,
and the k3 term that GRPO puts in its loss (chapter 6).
"""

from __future__ import annotations

import torch

from .utils import check_binary, check_finite, check_same_shape


def _tensor(name: str, x) -> torch.Tensor:
    """``x`` as a tensor (tensors as they are, lists and arrays converted), else ``TypeError`` naming it."""
    if torch.is_tensor(x):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor (or a list or array of numbers), got {type(x).__name__}") from None


def _floats(name: str, x) -> torch.Tensor:
    """``_tensor(name, x)``, or ``TypeError`` naming it unless it holds floating-point numbers."""
    x = _tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {x.dtype}")
    return x


def _check_log_probs(name: str, x: torch.Tensor) -> None:
    """``ValueError`` naming ``x`` unless it holds log-probabilities over its last axis: no NaN, and
    logsumexp = 0 within max(1e-4, 16 eps of its dtype). Logits (logsumexp != 0) and probabilities
    (logsumexp > 0) are refused; -inf (probability 0) is allowed."""
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last axis (the outcomes), got shape {tuple(x.shape)}")
    lse = x.detach().logsumexp(-1)
    tol = max(1e-4, 16 * torch.finfo(x.dtype).eps)
    if not bool((lse.abs() <= tol).all()):
        if bool(x.isnan().any()):
            raise ValueError(f"{name} must be log-probabilities; it holds NaN")
        bad = lse[~(lse.abs() <= tol)].flatten()[0].item()
        raise ValueError(f"{name} must be log-probabilities (logsumexp 0 over the last axis, within {tol:.0e}); "
                         f"got logsumexp {bad:.4g}: pass torch.log_softmax(logits, -1) for logits, "
                         f"torch.log(probs) for probabilities")


def exact_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL[p || q] = sum_a p(a) (log p(a) - log q(a)) over the last axis, from log-probabilities.

    Exact, and finite wherever it is finite mathematically: an outcome with p(a) = 0 adds
    exactly 0 (0 log 0 = 0, even where q(a) = 0 too); one with p(a) > 0 = q(a) makes it +inf.
    ``logp`` and ``logq`` are normalised log-probabilities (a log-softmax), of one shape [..., K];
    logits, probabilities, NaN and an empty last axis are refused (``ValueError``).
    """
    logp, logq = _floats("logp", logp), _floats("logq", logq)
    check_same_shape(logp=logp, logq=logq)
    _check_log_probs("logp", logp)
    _check_log_probs("logq", logq)
    return _exact_kl(logp, logq)


def _exact_kl(logp, logq):
    p = torch.softmax(logp, dim=-1)
    terms = p * (logp - logq)
    terms = torch.where(p > 0, terms, torch.zeros_like(terms))
    return terms.sum(-1)


def sequence_kl(logits: torch.Tensor, logits_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) over each sequence's unmasked positions, [B], from the
    logits [B, T, V] of pi and of pi_ref (``exact_kl`` per token, summed under ``mask`` [B, T]).

    Refused (``ValueError``): logits of other shapes, NaN or +inf logits, a mask not [B, T] or not
    of 0s and 1s.
    """
    logits, logits_ref, mask = _floats("logits", logits), _floats("logits_ref", logits_ref), _tensor("mask", mask)
    check_same_shape(logits=logits, logits_ref=logits_ref)
    if logits.dim() != 3 or tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"logits must be [B, T, V] and mask [B, T], got logits {tuple(logits.shape)} "
                         f"and mask {tuple(mask.shape)}")
    for name, x in (("logits", logits), ("logits_ref", logits_ref)):
        if bool((x.isnan() | x.isposinf()).any()):
            raise ValueError(f"{name} must not hold NaN or +inf")
    check_binary("mask", mask)
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(logits_ref, -1)
    return (_exact_kl(logp, logq) * mask).sum(dim=1)


def mean_kl(logp_old: torch.Tensor, logp_new: torch.Tensor) -> torch.Tensor:
    """E_s[ KL[pi_old(.|s) || pi_new(.|s)] ]: the exact KL per state, averaged over the states.

    TRPO's mean KL (its constraint KL_bar <= delta) and PPO's measured KL per update, from the
    log-probabilities of every action, [S, A]. Refused as by ``exact_kl``, and no state (S = 0).
    """
    logp_old, logp_new = _floats("logp_old", logp_old), _floats("logp_new", logp_new)
    check_same_shape(logp_old=logp_old, logp_new=logp_new)
    _check_log_probs("logp_old", logp_old)
    _check_log_probs("logp_new", logp_new)
    if logp_old.numel() == 0:
        raise ValueError(f"logp_old must hold at least one state, got shape {tuple(logp_old.shape)}")
    return _exact_kl(logp_old, logp_new).mean()


def kl_estimators(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict:
    """Per-sample estimators of KL(pi || pi_ref) from y ~ pi, with log rho = log pi_ref(y) - log pi(y):

    k1 = -log rho (unbiased, can be negative), k2 = (log rho)^2 / 2 (biased, >= 0),
    k3 = (rho - 1) - log rho (unbiased, >= 0) (eq. rlhf-kl-est). ``logp`` and ``logp_ref`` (one
    shape) must be finite (``ValueError`` otherwise).
    """
    logp, logp_ref = _check_samples(logp, logp_ref)
    log_rho = logp_ref - logp
    return {"k1": -log_rho, "k2": 0.5 * log_rho ** 2, "k3": _k3(logp, logp_ref)}


def k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 = (rho - 1) - log rho, rho = pi_ref(y) / pi(y), per sample: unbiased for KL(pi || pi_ref)
    when y ~ pi, and never negative. PPO's ``approx_kl`` is k3 of KL[pi_old || pi_theta] (samples
    from pi_old, so ``logp`` = log pi_old); GRPO's KL loss term is k3 per token. ``logp`` and
    ``logp_ref`` (one shape) must be finite (``ValueError`` otherwise)."""
    return _k3(*_check_samples(logp, logp_ref))


def _check_samples(logp, logp_ref) -> tuple[torch.Tensor, torch.Tensor]:
    logp, logp_ref = _floats("logp", logp), _floats("logp_ref", logp_ref)
    check_same_shape(logp=logp, logp_ref=logp_ref)
    check_finite("logp", logp.detach())
    check_finite("logp_ref", logp_ref.detach())
    return logp, logp_ref


def _k3(logp, logp_ref):
    log_rho = logp_ref - logp
    return torch.expm1(log_rho) - log_rho
