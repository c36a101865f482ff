"""Chapter 5: Direct Preference Optimization (Rafailov et al., 2023).

The KL-regularised RLHF objective max_pi E[r(x, y)] - beta KL[pi(.|x) || pi_ref(.|x)] has the
closed-form optimum (DPO paper, Eq. 4)

    pi_r(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x),   Z(x) = sum_y pi_ref(y|x) exp(r(x, y) / beta),

(``optimal_policy``, ``log_optimal_policy`` and ``log_partition``). Solving it for the reward (Eq. 5),
r(x, y) = beta log(pi_r(y|x) / pi_ref(y|x)) + beta log Z(x), and substituting into Bradley-Terry
makes Z(x) cancel, which leaves a maximum-likelihood loss on the policy itself (Eq. 7):

    L_DPO = -E[ log sigma( beta log(pi(y_w|x) / pi_ref(y_w|x)) - beta log(pi(y_l|x) / pi_ref(y_l|x)) ) ]

(``dpo_loss``). ``implicit_reward`` is r_hat = beta log(pi / pi_ref), ``dpo_gradient`` the
paper's expression for the gradient of L_DPO (Section 4), and ``train`` a DPO trainer for a
causal LM against a frozen reference model, logging the metrics TRL users know
(``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F

from .lm import group_response_logits, logprobs_from_logits, stack_pairs
from .reward import preference_accuracy
from .sft import check_model, check_trainable, kept_as_found
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, make_config, progress, rng_scope,
                      run_guard)
from .utils import check_finite, check_positive, check_positive_int, check_seed, check_same_shape


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


def _check_problem(ref_probs, rewards, beta):
    beta = check_positive("beta", beta)
    if not torch.is_tensor(ref_probs):
        ref_probs = np.asarray(ref_probs, dtype=float)
    if not torch.is_tensor(rewards):
        rewards = np.asarray(rewards, dtype=float)
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
# The DPO loss, the implicit reward and the gradient (DPO paper, Eq. 5, Eq. 7 and Section 4)
# ---------------------------------------------------------------------------------------------

def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r_hat(x, y) = beta log(pi(y|x) / pi_ref(y|x)): Eq. 5 without the beta log Z(x) term (not detached).

    Refused as in ``check_pair_logps``: beta <= 0, and log-probabilities that are not finite tensors of one shape."""
    beta = check_pair_logps(beta, policy_logps=policy_logps, ref_logps=ref_logps)
    return beta * (policy_logps - ref_logps)


def check_pair_logps(beta: float, **logps: torch.Tensor) -> float:
    """The checks every pairwise preference loss makes (DPO, IPO): ``beta`` > 0, the four
    log-probabilities torch tensors (``TypeError`` otherwise) of one shape and finite. Returns ``beta`` as a float."""
    beta = check_positive("beta", beta)
    for name, t in logps.items():
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor of log-probabilities, got {type(t).__name__}")
    check_same_shape(**logps)
    for name, t in logps.items():
        check_finite(name, t.detach())
    return beta


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    """Per-example DPO losses and implicit rewards (DPO paper, Eq. 7).

    loss_i = -log sigma( beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))) ),
    computed with ``logsigmoid`` so it is finite for any finite log-probabilities. Returns
    ``(losses, chosen_rewards, rejected_rewards)``, the rewards being the implicit rewards
    beta log(pi / pi_ref) of the chosen (y_w) and rejected (y_l) responses, detached.
    """
    beta = check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_gradient(params, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> list:
    """The paper's gradient of L_DPO (Section 4, "What does the DPO update do?"), term by term:

        grad L_DPO = -beta E[ sigma(r_hat(x, y_l) - r_hat(x, y_w)) (grad log pi(y_w|x) - grad log pi(y_l|x)) ],

    with r_hat = beta log(pi / pi_ref). Each grad log pi(y|x) is taken separately by autograd
    (one backward pass per response), then weighted and averaged as written, so the result can
    be compared with autograd of ``dpo_loss(...).mean()``. Returns one tensor per parameter.
    Refused as in ``dpo_loss``, and: no pair at all (a mean over nothing), policy log-probabilities
    that do not depend on ``params`` (no ``requires_grad``).
    """
    beta = check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if policy_chosen_logps.numel() == 0:
        raise ValueError("policy_chosen_logps must hold at least one pair, got none")
    if not (policy_chosen_logps.requires_grad and policy_rejected_logps.requires_grad):
        raise ValueError("policy_chosen_logps and policy_rejected_logps must be computed from params "
                         "(requires_grad), so that their gradients exist")
    params = list(params)
    chosen_rewards = implicit_reward(policy_chosen_logps, ref_chosen_logps, beta).detach()
    rejected_rewards = implicit_reward(policy_rejected_logps, ref_rejected_logps, beta).detach()
    weights = torch.sigmoid(rejected_rewards - chosen_rewards)   # large when the pair is ranked wrongly
    total = [torch.zeros_like(p) for p in params]
    n = policy_chosen_logps.numel()
    for i in range(n):
        grad_w = torch.autograd.grad(policy_chosen_logps.reshape(-1)[i], params, retain_graph=True,
                                     allow_unused=True)
        grad_l = torch.autograd.grad(policy_rejected_logps.reshape(-1)[i], params, retain_graph=True,
                                     allow_unused=True)
        for t, gw, gl in zip(total, grad_w, grad_l):
            gw = torch.zeros_like(t) if gw is None else gw
            gl = torch.zeros_like(t) if gl is None else gl
            t.add_(-beta / n * weights.reshape(-1)[i] * (gw - gl))
    return total


# ---------------------------------------------------------------------------------------------
# A DPO trainer for causal LMs (the loss of Eq. 7 over (prompt, chosen, rejected) token batches)
# ---------------------------------------------------------------------------------------------

PAIR_KEYS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


def check_pairs(data: dict, name: str = "data") -> int:
    """The number of pairs in ``data``, the preference tensors of ``rlnotes.reward.Preferences.encode``.

    Refused, naming ``name``: anything but a dict (``TypeError``), a dict without the keys
    ``PAIR_KEYS`` (``ValueError``), values that are not 2-D integer torch tensors (``TypeError``),
    a mask of another shape than its ids, or no pairs, or sides of different lengths, or a pair whose
    chosen or rejected response has no token (its mask row sums to 0) (``ValueError``).
    """
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a dict with the tensors {PAIR_KEYS} (e.g. "
                        f"rlnotes.reward.Preferences.encode(tokenizer)), got {type(data).__name__}")
    missing = [k for k in PAIR_KEYS if k not in data]
    if missing:
        raise ValueError(f"{name} must be a dict with the tensors {PAIR_KEYS} "
                         f"(e.g. rlnotes.reward.Preferences.encode(tokenizer)); missing {missing}")
    for k in PAIR_KEYS:
        t = data[k]
        if not torch.is_tensor(t) or t.dim() != 2 or t.is_floating_point() or t.is_complex():
            got = f"a {t.dim()}-D {t.dtype} tensor" if torch.is_tensor(t) else type(t).__name__
            raise TypeError(f"{name}[{k!r}] must be a 2-D integer torch.Tensor (one row per pair, as "
                            f"Preferences.encode makes it), got {got}")
    n = len(data["prompt_ids"])
    if n == 0 or any(len(data[k]) != n for k in PAIR_KEYS):
        raise ValueError(f"{name} must hold the same number (>= 1) of prompts, chosen and rejected responses, "
                         f"got {[len(data[k]) for k in PAIR_KEYS]}")
    for side in ("prompt", "chosen", "rejected"):
        if data[f"{side}_ids"].shape != data[f"{side}_mask"].shape:
            raise ValueError(f"{name}['{side}_mask'] must have the shape of {name}['{side}_ids'] "
                             f"{tuple(data[f'{side}_ids'].shape)}, got {tuple(data[f'{side}_mask'].shape)}")
    for side in ("chosen", "rejected"):
        empty = data[f"{side}_mask"].sum(1) == 0
        if bool(empty.any()):
            i = int(empty.nonzero()[0, 0])
            raise ValueError(f"{name}['{side}_mask'] must mark at least one token per pair (a response of length "
                             f">= 1, as Preferences.encode makes it with its EOS), got an empty {side} response "
                             f"at pair {i}")
    return n


def trim_pairs(data: dict, idx) -> dict:
    """The pairs at ``idx``, with all-padding columns removed (prompts are left-padded, responses right-padded)."""
    b = {k: data[k][idx] for k in PAIR_KEYS}
    start = b["prompt_ids"].shape[1] - max(int(b["prompt_mask"].sum(0).ne(0).sum()), 1)
    b["prompt_ids"], b["prompt_mask"] = b["prompt_ids"][:, start:], b["prompt_mask"][:, start:]
    for side in ("chosen", "rejected"):
        width = max(int(b[f"{side}_mask"].sum(1).max()), 1)
        b[f"{side}_ids"], b[f"{side}_mask"] = b[f"{side}_ids"][:, :width], b[f"{side}_mask"][:, :width]
    return b




def pair_logps(model, batch: dict, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_w|x), log pi(y_l|x)), each [B], in one pass over the 2B sequences [x; y_w] and [x; y_l],
    each prompt run once (``rlnotes.lm.group_response_logits``).

    Each is the sum of the response tokens' log-probabilities (prompt and padding masked), the four
    numbers per pair that Eq. 7 needs (with the reference's). On a CUDA GPU with bf16 support the
    pass runs under bf16 autocast, for the policy and the reference alike (so that their log-ratio
    starts at exactly 0); the result is float32. ``batch`` is checked as ``check_pairs`` checks data.
    """
    check_pairs(batch, "batch")
    p, pm, ids, mask = stack_pairs(batch, pad_id)
    logps = logprobs_from_logits(group_response_logits(model, p, pm, ids, mask), ids, mask).sum(dim=1)
    return logps.float().view(-1, 2).unbind(1)


def _batch_size(device: torch.device, batch_size: int | None) -> int:
    """``batch_size``, or the default for scoring, 512 pairs per pass.

    On a CPU, 64 would be up to 20% faster at width 256 (bench/ref_batch_size.py), but the padded
    width of a pass changes the float rounding of every log-probability by ~1e-9: at 512 the
    reference passes share the training batches' widths often enough that DPO's first step sees
    pi = pi_ref exactly (loss log 2, every margin 0), which chapter 5 shows. The default keeps that.
    """
    if batch_size is None:
        return 512
    return check_positive_int("batch_size", batch_size)


@torch.no_grad()
def reference_logps(ref, data: dict, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi_ref(y_w|x), log pi_ref(y_l|x)) for every pair of ``data``: computed once, the reference is frozen.

    ``batch_size`` pairs per forward pass (None: the fastest default, ``_batch_size``). ``ref`` runs
    in eval mode and is handed back in the modes it came in.
    """
    check_model("ref", ref)
    n = check_pairs(data)
    batch_size = _batch_size(data["prompt_ids"].device, batch_size)
    chosen, rejected = [], []
    with kept_as_found(ref):
        ref.eval()
        for start in range(0, n, batch_size):
            c, r = pair_logps(ref, trim_pairs(data, slice(start, start + batch_size)))
            chosen.append(c)
            rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def check_ref_logps(ref_logps, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref_logps`` if it is what ``reference_logps`` returns for ``n`` pairs: two finite tensors of
    shape (n,); ``TypeError`` if it is not a pair of tensors, ``ValueError`` for a shape or a NaN."""
    if not isinstance(ref_logps, (tuple, list)) or len(ref_logps) != 2 or not all(map(torch.is_tensor, ref_logps)):
        raise TypeError(f"ref_logps must be two tensors (chosen, rejected), as reference_logps returns them, "
                        f"got {type(ref_logps).__name__}")
    ref_c, ref_r = ref_logps
    if ref_c.shape != (n,) or ref_r.shape != (n,):
        raise ValueError(f"ref_logps must be two tensors of shape ({n},), one per pair of data (reference_logps), "
                         f"got {tuple(ref_c.shape)} and {tuple(ref_r.shape)}")
    check_finite("ref_logps", torch.stack([ref_c, ref_r]))
    return ref_c, ref_r


@torch.no_grad()
def preference_metrics(policy, ref, data: dict, beta: float, batch_size: int | None = None,
                       ref_logps: tuple | None = None) -> dict:
    """Mean DPO loss and the implicit reward's statistics on a set of pairs (e.g. held-out ones).

    ``accuracy`` is the fraction of pairs whose implicit reward beta log(pi / pi_ref) ranks y_w
    above y_l (ties count one half), the number to set beside a reward model's accuracy.
    ``policy`` runs in eval mode and is handed back in the modes it came in.
    """
    check_model("policy", policy)
    n = check_pairs(data)
    batch_size = _batch_size(data["prompt_ids"].device, batch_size)
    ref_c, ref_r = reference_logps(ref, data, batch_size) if ref_logps is None else check_ref_logps(ref_logps, n)
    with kept_as_found(policy):
        policy.eval()
        pol = [pair_logps(policy, trim_pairs(data, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
    pol_c, pol_r = torch.cat([p[0] for p in pol]), torch.cat([p[1] for p in pol])
    losses, chosen, rejected = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
    return {"loss": losses.mean().item(), "accuracy": preference_accuracy(chosen, rejected),
            "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item(),
            "logps/chosen": pol_c.mean().item(), "logps/rejected": pol_r.mean().item()}


@dataclass(frozen=True, kw_only=True)
class DPOConfig(Config):
    """DPO: ``epochs`` passes over the pairs in mini-batches of ``batch_size`` (shuffled if ``shuffle``,
    reproducibly from ``seed``), AdamW at ``lr`` without weight decay, gradients clipped to
    ``max_grad_norm`` (None: none), KL coefficient ``beta``; an evaluation every ``eval_every``
    optimiser steps (None: at the end only); ``pad_id`` pads the two responses of a pair to one width."""

    beta: float = 0.1
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    max_grad_norm: float | None = 1.0
    seed: int = 0
    shuffle: bool = True
    eval_every: int | None = None
    pad_id: int = 0
    progress: bool = False

    def __post_init__(self):
        self.check("beta", check_positive)
        for name in ("epochs", "batch_size", "eval_every"):
            self.check(name, check_positive_int)
        self.check("lr", check_positive)
        self.check("max_grad_norm", check_positive)
        self.check("seed", check_seed)
        self.check("pad_id", check_positive_int, 0)
        self.check("shuffle", check_bool)
        self.check("progress", check_bool)


def dpo_step(policy, optimizer, params: list, batch: dict, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             cfg: DPOConfig) -> dict:
    """One optimiser step on the mean of Eq. 7 over a mini-batch of pairs; returns what it measured
    under TRL's names."""
    pol_c, pol_r = pair_logps(policy, batch, cfg.pad_id)
    losses, chosen, rejected = dpo_loss(pol_c, pol_r, ref_chosen, ref_rejected, cfg.beta)
    loss = losses.mean()
    optimizer.zero_grad()
    loss.backward()
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    return preference_log(losses, chosen, rejected, pol_c, pol_r)


def preference_log(losses, chosen, rejected, pol_c, pol_r) -> dict:
    """What a preference trainer logs for one batch, under TRL's names: ``loss``, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins`` (implicit rewards), ``rewards/accuracies``
    (``preference_accuracy``: a tie counts one half), ``logps/chosen``, ``logps/rejected``."""
    return {"loss": losses.mean().item(), "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(), "rewards/margins": (chosen - rejected).mean().item(),
            "rewards/accuracies": preference_accuracy(chosen, rejected),
            "logps/chosen": pol_c.detach().mean().item(), "logps/rejected": pol_r.detach().mean().item()}


def check_callback(callback) -> None:
    """Raise ``TypeError`` unless ``callback`` is None or callable."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function policy -> dict of numbers (or None), "
                        f"got {type(callback).__name__}")


def callback_metrics(returned, own: tuple = ()) -> dict:
    """What a trainer's ``callback(policy)`` returned, as ``{"eval/<name>": float}`` to log.

    None logs nothing. A dict's values must be real numbers: Python ints and floats, NumPy
    scalars, 0-d arrays and 0-d tensors (converted to floats; NaN is logged as it is). Refused:
    anything but None or a dict, a non-string key or a key of the trainer's own evaluation
    (``own``, e.g. ``"loss"``: it would overwrite ``eval/loss``; ``ValueError``), and a value
    that is not a real number (a string, a bool, a tensor of several numbers; ``TypeError``).
    """
    if returned is None:
        return {}
    if not isinstance(returned, dict):
        raise TypeError(f"callback must return a dict of numbers (or None), got {type(returned).__name__}")
    out = {}
    for key, value in returned.items():
        if not isinstance(key, str):
            raise TypeError(f"callback's keys must be strings (logged as eval/<key>), got {key!r}")
        if key in own:
            raise ValueError(f"callback's key {key!r} clashes with the trainer's own eval/{key}; "
                             f"rename it (taken: {list(own)})")
        out[f"eval/{key}"] = _real_number(key, value)
    return out


def _real_number(key: str, value) -> float:
    number = value.item() if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and value.ndim == 0 else value
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return float(number)
    raise TypeError(f"callback's value for {key!r} must be a real number (int, float, a NumPy or 0-d torch "
                    f"scalar), got {value!r}")


def train(policy, ref, data: dict, config: DPOConfig | None = None, *, eval_data: dict | None = None,
          callback=None, ref_logps: tuple | None = None, **kwargs) -> TrainResult:
    """DPO: minimise the mean of Eq. 7 over mini-batches of (x, y_w, y_l) with AdamW (no weight decay).

    Arguments: those of ``DPOConfig``, or a ``config``. ``policy`` is trained in place, only its
    parameters that the caller left trainable (``requires_grad=True``), and handed back in the
    train/eval modes it came in; ``None``: start from a trainable copy of ``ref``, as the paper
    does, handed back in eval mode. ``ref`` stays frozen and as it was (its requires_grad flags and
    modes), and its log-probabilities are computed once before training. ``data`` (and
    ``eval_data``) hold the token tensors ``prompt_ids/prompt_mask`` (left-padded),
    ``chosen_ids/chosen_mask`` and ``rejected_ids/rejected_mask`` (right-padded), as returned by
    ``rlnotes.reward.Preferences.encode`` (``check_pairs``).

    Logs per optimiser step, under TRL's names: ``loss``, ``rewards/chosen``, ``rewards/rejected``
    (mean implicit rewards beta log(pi / pi_ref)), ``rewards/accuracies`` (``preference_accuracy``:
    the fraction with chosen > rejected, a tie counting one half), ``rewards/margins``,
    ``logps/chosen``, ``logps/rejected`` (mean log pi(y|x)) and ``seconds``; every ``eval_every``
    steps (and at the end) ``eval/loss`` and ``eval/accuracy`` on ``eval_data``, with ``eval/step``.
    ``callback(policy)``, if given, is called at the same points (before training too when
    ``eval_every`` is set); it returns None (nothing to log) or a dict of numbers, logged as
    ``eval/<name>`` (``callback_metrics``: e.g. the true reward and KL of samples). ``ref_logps``:
    the reference's log-probabilities of ``data``, as ``reference_logps(ref, data)`` returns them,
    to reuse them over several runs (by default they are computed here). Returns a ``TrainResult``
    whose ``model`` is the policy; an interrupt, from the reference pass on, raises
    ``TrainingInterrupted`` with the result so far.

    Refused: a policy with no trainable parameter (``ValueError``), and float16 parameters in the
    model that is trained (``policy``, or ``ref`` when it is copied; ``TypeError``: allowed are
    float32, float64 and bfloat16, ``rlnotes.sft.check_model``). A reference that is only run may
    be in any dtype.
    """
    n = check_pairs(data)
    cfg = make_config(DPOConfig, config, **kwargs)
    if policy is ref:
        raise ValueError("policy must not be ref itself (ref stays frozen): pass policy=None to train a copy of ref")
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    check_callback(callback)
    check_model("ref", ref, trained=policy is None)
    if policy is not None:
        check_trainable("policy", policy)
    if ref_logps is not None:
        ref_logps = check_ref_logps(ref_logps, n)
    history = History()
    with kept_as_found(*([ref] if policy is None else [ref, policy])), rng_scope(cfg.seed):
        if policy is None:
            policy = copy.deepcopy(ref)
            policy.requires_grad_(True)
        params = [p for p in policy.parameters() if p.requires_grad]
        result = TrainResult(policy, history, cfg)
        with run_guard(lambda: result, policy.eval):
            ref_c, ref_r = reference_logps(ref, data) if ref_logps is None else ref_logps
            eval_ref = reference_logps(ref, eval_data) if eval_data is not None else None
            _fit(policy, params, ref, data, n, (ref_c, ref_r), eval_data, eval_ref, callback, cfg, history)
    return result


def _fit(policy, params, ref, data, n, ref_logps, eval_data, eval_ref, callback, cfg, history) -> None:
    """``train``'s loop: ``cfg.epochs`` passes of ``dpo_step`` over ``data``, each applied whole (``atomic``)."""
    ref_c, ref_r = ref_logps
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    evaluating = eval_data is not None or callback is not None
    step = 0

    def evaluate():
        logged = {"eval/step": step}
        if eval_data is not None:
            m = preference_metrics(policy, ref, eval_data, cfg.beta, ref_logps=eval_ref)
            logged.update({"eval/loss": m["loss"], "eval/accuracy": m["accuracy"]})
        if callback is not None:
            logged.update(callback_metrics(callback(policy), own=("step", "loss", "accuracy")))
        history.log(logged)
        policy.train()

    if evaluating and cfg.eval_every is not None:
        evaluate()
    policy.train()
    for _ in progress(range(cfg.epochs), cfg.progress, desc="dpo"):
        order = torch.randperm(n, generator=order_gen) if cfg.shuffle else torch.arange(n)
        for idx in order.split(cfg.batch_size):
            idx = idx.to(data["prompt_ids"].device)
            with atomic():
                with Timer() as timer:
                    stats = dpo_step(policy, opt, params, trim_pairs(data, idx), ref_c[idx], ref_r[idx], cfg)
                step += 1
                history.log({**stats, "seconds": timer.seconds})
            if evaluating and cfg.eval_every is not None and step % cfg.eval_every == 0:
                evaluate()
    if evaluating and (cfg.eval_every is None or step % cfg.eval_every != 0):
        evaluate()


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
    [steps, K] (float64), to compare with ``optimal_policy(ref_probs, r, beta)``.
    """
    beta = check_positive("beta", beta)
    ref, y_w, y_l = check_token_pairs(ref_probs, winners, losers)
    epochs, batch_size = check_positive_int("epochs", epochs), check_positive_int("batch_size", batch_size)
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


# ---------------------------------------------------------------------------------------------
# What one update computes: RLHF-PPO against DPO, counted (chapter 5, section 5.8)
# ---------------------------------------------------------------------------------------------

ROLES = ("policy", "value head", "reference", "reward model")
WORK_KEYS = ("forward", "backward", "decode_steps", "tokens_decoded")


@contextlib.contextmanager
def count_passes(ref, reward_model=None):
    """Count what each network computes inside a ``with`` block, by role; yields the counts as they fill.

    The counts are a dict role -> {``forward``, ``backward``, ``decode_steps``, ``tokens_decoded``,
    ``networks``, ``parameters``} for the roles of ``ROLES``. A call of ``ref`` is the reference's and a
    call of ``reward_model`` the reward model's; any other ``transformers`` language model called outside
    those is the policy, and an ``nn.Linear`` called outside all of them is a value head (as in
    ``rlhf.PolicyWithValue``). Calls nested inside a counted one belong to it. A pass that runs each
    prompt once for several responses (``lm.group_response_logits``) counts as one forward: its
    prompt half (the model's body on the prompts, then its output layer on their last states) is not
    counted apart.

    * ``decode_steps``: policy calls that return the logits of one position per row, the steps of
      autoregressive sampling (``sampling.sample``: the prompt's pass, then one pass per new token, each
      waiting for the token before it); ``tokens_decoded`` sums their rows (one new token each);
    * ``forward``: every other call, one pass over whole sequences;
    * ``backward``: a gradient reaching a counted call's output (one backward pass through it);
    * ``networks`` and ``parameters``: the distinct modules called in that role, and their size.
    """
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
    from transformers import PreTrainedModel

    check_model("ref", ref)
    if reward_model is not None:
        check_model("reward_model", reward_model)

    counts = {role: dict.fromkeys(WORK_KEYS + ("networks", "parameters"), 0) for role in ROLES}
    seen, stack = [], []
    parts = {id(m) for net in (ref, reward_model) if net is not None for m in net.modules() if m is not net}

    def role_of(module):
        if any(role for _, role in stack):
            return None                            # inside a network already counted
        if module is ref:
            return "reference"
        if reward_model is not None and module is reward_model:
            return "reward model"
        if id(module) in parts:
            return None                            # a part of a network called on its own: a prompt half
        if isinstance(module, PreTrainedModel):
            if module.get_output_embeddings() is None:
                return None                        # a language model's body alone: a prompt half
            parts.update(id(m) for m in module.modules() if m is not module)
            return "policy"
        return "value head" if isinstance(module, torch.nn.Linear) else None

    def bump(role, key, n=1):
        counts[role][key] += n

    def pre(module, inputs):
        stack.append((module, role_of(module)))

    def post(module, inputs, output):
        _, role = stack.pop()
        if role is None:
            return
        if not any(m is module for m in seen):
            seen.append(module)
            bump(role, "networks")
            bump(role, "parameters", sum(p.numel() for p in module.parameters()))
        out = getattr(output, "logits", output)
        if role == "policy" and torch.is_tensor(out) and out.dim() == 3 and out.shape[1] == 1:
            bump(role, "decode_steps")
            bump(role, "tokens_decoded", out.shape[0])
        else:
            bump(role, "forward")
        if torch.is_tensor(out) and out.requires_grad:
            out.register_hook(lambda grad: bump(role, "backward"))

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, always_call=True)]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _work_per_update(run, ref, reward_model, n_updates: int) -> tuple[dict, dict]:
    """(per update, once) from ``run(k)`` for k = 1 and 1 + n_updates: the difference over n_updates, and
    the forward and backward passes of the 1-update run beyond it (decoding varies from update to update)."""
    with count_passes(ref, reward_model) as one:
        run(1)
    with count_passes(ref, reward_model) as more:
        run(1 + n_updates)
    per = {role: {k: (more[role][k] - one[role][k]) / n_updates for k in WORK_KEYS} for role in ROLES}
    for role in ROLES:
        per[role]["networks"], per[role]["parameters"] = more[role]["networks"], more[role]["parameters"]
    once = {role: {k: one[role][k] - per[role][k] for k in ("forward", "backward")} for role in ROLES}
    return per, once


def update_work(prepared, data: dict, *, n_updates: int = 2, ppo_config=None, dpo_config: DPOConfig | None = None
                ) -> dict:
    """What one update of RLHF-PPO and one of DPO compute, counted by ``count_passes`` on real runs.

    RLHF-PPO is ``rlhf.train(prepared)`` (``ppo_config``: an ``rlhf.RLHFConfig``, default its
    defaults); DPO is ``train(None, prepared.sft, pairs)`` on the first ``batch_size`` x k pairs of
    ``data``, one epoch (``dpo_config``, default ``DPOConfig()``), so k updates. Each runs for 1 and for
    1 + ``n_updates`` updates, same seed; the difference divided by ``n_updates`` is the work of one
    update, and the forward and backward passes of the 1-update run beyond it are done once per run
    (DPO's reference log-probabilities of the pairs, 512 pairs per pass). Returns {"RLHF-PPO": {"per_update": ..., "once": ...}, "DPO": {...}},
    each a dict role -> counts (``count_passes``'s keys; ``networks`` and ``parameters`` from the
    longer run).
    """
    from . import rlhf

    n = check_pairs(data)
    n_updates = check_positive_int("n_updates", n_updates)
    ppo_cfg = make_config(rlhf.RLHFConfig, ppo_config)
    dpo_cfg = make_config(DPOConfig, dpo_config, epochs=1, eval_every=None)
    if dpo_cfg.batch_size * (1 + n_updates) > n:
        raise ValueError(f"data must hold at least batch_size x (1 + n_updates) = "
                         f"{dpo_cfg.batch_size * (1 + n_updates)} pairs, got {n}")

    def ppo_run(k):
        rlhf.train(prepared, ppo_cfg, steps=k)

    def dpo_run(k):
        train(None, prepared.sft, {key: v[:k * dpo_cfg.batch_size] for key, v in data.items()}, dpo_cfg)

    out = {}
    for method, run in (("RLHF-PPO", ppo_run), ("DPO", dpo_run)):
        per, once = _work_per_update(run, prepared.sft, prepared.reward_model, n_updates)
        out[method] = {"per_update": per, "once": once}
    return out


# ---------------------------------------------------------------------------------------------
# The reward-KL frontier over seeds: DPO and RLHF-PPO at one beta (chapter 5, section 5.7)
# ---------------------------------------------------------------------------------------------

METHODS = ("DPO", "PPO")
FRONTIER_KEYS = ("r_star", "r_star/se", "r_phi", "r_phi/se", "kl/exact_per_sequence", "kl/exact_per_sequence/se", "n")


def frontier_point(prepared, data: dict, method: str, beta: float, seed: int = 0, *, checkpoints=(),
                   eval_data: dict | None = None, n_repeats: int = 2, ref_logps: tuple | None = None,
                   **kwargs) -> dict:
    """One point of the reward-KL frontier (DPO paper, Figure 2): train ``method`` with the KL coefficient
    ``beta`` of the objective Eq. 3, then measure its samples on held-out prompts.

    "DPO": ``train(None, prepared.sft, data, beta=beta, seed=seed, **kwargs)``; "PPO":
    ``rlhf.train(prepared, beta=beta, seed=seed, **kwargs)``. The policy is measured by
    ``measure.evaluate(..., n_repeats=n_repeats)`` (``FRONTIER_KEYS``: r*, r_phi and KL, each with its
    standard error, and n); for DPO with ``eval_data`` also the implicit reward's ``accuracy`` on those
    pairs. ``checkpoints``: DPO optimiser steps after which the policy is measured as well (a run of
    e epochs passes through the run of fewer epochs: same seed, same order, the same weights).
    Returns {"eval": ..., "checkpoints": {step: ...}, "history": History, "config": ...}; the model is
    not kept.
    """
    from . import rlhf
    from .measure import evaluate

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    checkpoints = sorted({check_positive_int("checkpoints", c) for c in checkpoints})
    if checkpoints and method != "DPO":
        raise ValueError("checkpoints are optimiser steps of DPO; PPO is measured at the end only")

    def measure(policy):
        m = evaluate(policy, prepared, n_repeats=n_repeats)
        out = {k: m[k] for k in FRONTIER_KEYS}
        if method == "DPO" and eval_data is not None:
            out["accuracy"] = preference_metrics(policy, prepared.sft, eval_data, beta)["accuracy"]
        return out

    seen = {}
    if method == "PPO":
        run = rlhf.train(prepared, beta=beta, seed=seed, **kwargs)
    else:
        cfg = make_config(DPOConfig, None, beta=beta, seed=seed, **kwargs)
        total = cfg.epochs * -(-check_pairs(data) // cfg.batch_size)
        if checkpoints and checkpoints[-1] > total:
            raise ValueError(f"checkpoints must be optimiser steps of the run (1 to {total}), got {checkpoints}")
        every = int(np.gcd.reduce(checkpoints)) if checkpoints else None
        calls = []

        def at_checkpoint(policy):          # train calls it at steps 0, every, 2 every, ... and at the end
            step = min(every * len(calls), total)
            calls.append(step)
            if step in checkpoints:
                seen[step] = measure(policy)
            return {}

        run = train(None, prepared.sft, data, cfg, ref_logps=ref_logps,
                    callback=at_checkpoint if checkpoints else None, eval_every=every)
    return {"eval": measure(run.model), "checkpoints": seen, "history": run.history, "config": run.config}


_FRONTIER_WORKER = {}


def _frontier_worker_init(prepared, data, eval_data):
    import transformers

    torch.set_num_threads(1)
    # transformers registers what a model class can record (hidden states, which the value head of
    # RLHF-PPO reads) when a model of that class is built; a process that only unpickles models has
    # built none, so build one throwaway model per class first (weights from a forked generator)
    classes = {type(m): m.config for obj in vars(prepared).values() if isinstance(obj, torch.nn.Module)
               for m in obj.modules() if isinstance(m, transformers.PreTrainedModel)}
    with torch.random.fork_rng():
        for cls, config in classes.items():
            cls(config)
    _FRONTIER_WORKER.update(prepared=prepared, data=data, eval_data=eval_data,
                            ref_logps=reference_logps(prepared.sft, data))


def _frontier_job(point: dict) -> dict:
    w = _FRONTIER_WORKER
    ref = {"ref_logps": w["ref_logps"]} if point.get("method") == "DPO" else {}
    return frontier_point(w["prepared"], w["data"], eval_data=w["eval_data"], **ref, **point)


def frontier(prepared, data: dict, points, *, eval_data: dict | None = None, workers: int | None = None) -> list:
    """``frontier_point(prepared, data, eval_data=eval_data, **p)`` for each dict ``p`` of ``points``
    (``method``, ``beta``, ``seed`` and the rest of its arguments), in the order given.

    The points run in up to ``workers`` processes (default: one per core; 1: in this process), each
    with one torch thread, so that the results are the same whatever the number of processes. Each
    process receives ``prepared`` and the pairs once, and computes the reference's log-probabilities
    of the pairs once for all its DPO runs.
    """
    check_pairs(data)
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    points = [dict(p) for p in points]
    for p in points:
        if not {"method", "beta"} <= set(p):
            raise ValueError(f"each point needs a method and a beta, got {p}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(points), cores if workers is None else check_positive_int("workers", workers))
    if workers <= 1:
        threads = torch.get_num_threads()
        saved = dict(_FRONTIER_WORKER)
        try:
            _frontier_worker_init(prepared, data, eval_data)
            return [_frontier_job(p) for p in points]
        finally:
            torch.set_num_threads(threads)
            _FRONTIER_WORKER.clear()
            _FRONTIER_WORKER.update(saved)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_frontier_worker_init,
                             initargs=(prepared, data, eval_data)) as pool:
        return list(pool.map(_frontier_job, points))
