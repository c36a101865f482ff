"""The KL divergence, in one place: exact over a finite set of outcomes, and the k1, k2, k3
sample estimators (Schulman, "Approximating KL divergence", 2020).

Every KL that rlnotes reports comes from here: the mean KL per state of chapters 1-3 (TRPO's
constraint, PPO's diagnostics), the per-token KL of chapter 4 and the estimators compared there,
and the k3 term that GRPO puts in its loss (chapter 6).
"""

from __future__ import annotations

import torch

from .utils import check_same_shape


def exact_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL[p || q] = sum_a p(a) (log p(a) - log q(a)) over the last axis, from log-probabilities.

    Exact, and finite wherever it is finite mathematically: an outcome with p(a) = 0 adds
    exactly 0 (0 log 0 = 0, even where q(a) = 0 too); one with p(a) > 0 = q(a) makes it +inf.
    ``logp`` and ``logq`` are normalised log-probabilities (a log-softmax), of one shape [..., K].
    """
    check_same_shape(logp=logp, logq=logq)
    p = torch.softmax(logp, dim=-1)
    terms = p * (logp - logq)
    terms = torch.where(p > 0, terms, torch.zeros_like(terms))
    return terms.sum(-1)


def sequence_kl(logits: torch.Tensor, logits_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) over each sequence's unmasked positions, [B], from the
    logits [B, T, V] of pi and of pi_ref (``exact_kl`` per token, summed under ``mask`` [B, T])."""
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(logits_ref, -1)
    return (exact_kl(logp, logq) * mask).sum(dim=1)


def mean_kl(logp_old: torch.Tensor, logp_new: torch.Tensor) -> torch.Tensor:
    """E_s[ KL[pi_old(.|s) || pi_new(.|s)] ]: the exact KL per state, averaged over the states.

    TRPO's mean KL (its constraint KL_bar <= delta) and PPO's measured KL per update, from the
    log-probabilities of every action, [S, A].
    """
    return exact_kl(logp_old, logp_new).mean()


def kl_estimators(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict:
    """Per-sample estimators of KL(pi || pi_ref) from y ~ pi, with log rho = log pi_ref(y) - log pi(y):

    k1 = -log rho (unbiased, can be negative), k2 = (log rho)^2 / 2 (biased, >= 0),
    k3 = (rho - 1) - log rho (unbiased, >= 0) (eq. rlhf-kl-est).
    """
    check_same_shape(logp=logp, logp_ref=logp_ref)
    log_rho = logp_ref - logp
    return {"k1": -log_rho, "k2": 0.5 * log_rho ** 2, "k3": k3(logp, logp_ref)}


def k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 = (rho - 1) - log rho, rho = pi_ref(y) / pi(y), per sample: unbiased for KL(pi || pi_ref)
    when y ~ pi, and never negative. PPO's ``approx_kl`` is k3 of KL[pi_old || pi_theta] (samples
    from pi_old, so ``logp`` = log pi_old); GRPO's KL loss term is k3 per token."""
    log_rho = logp_ref - logp
    return torch.expm1(log_rho) - log_rho
