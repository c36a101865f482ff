"""Chapter 6: Group Relative Policy Optimization (GRPO; Shao et al. 2024, "DeepSeekMath", eq. 3).

GRPO drops PPO's value network: the G responses sampled for one prompt are each other's baseline,

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)                                  (eq. grpo-adv)

(``group_advantages``), the same advantage for every token of response i. The loss per token is
PPO's clipped surrogate plus a KL penalty written as a LOSS term with the k3 estimator,

    l_{i,t} = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1-eps, 1+eps) A_i) + beta k3_{i,t},
    rho_{i,t} = pi(y_t|s_t) / pi_old(y_t|s_t),  k3 = pi_ref/pi - 1 - log(pi_ref/pi)   (eq. grpo-loss)

and ``loss_type`` says how the l_{i,t} are averaged (``grpo_loss``):

- ``"grpo"`` (the paper): mean over each response's ``|y_i|`` tokens, then over the responses. A
  token of a short response weighs more than one of a long response: with A_i < 0 a longer
  response dilutes its penalty, so wrong answers drift longer (Liu et al. 2025, "Dr. GRPO").
- ``"dr_grpo"``: sum over all tokens / (number of responses * a constant max length).
- ``"dapo"`` (TRL 1.16's default): sum over all tokens / number of tokens in the batch.

Dividing by the group's std (``scale_rewards``) is the second bias Dr. GRPO names: groups whose
rewards barely differ get their differences blown up to unit scale. A group whose rewards are
all equal has std 0 and carries no signal: its advantages are exactly 0 (the eps keeps the
division finite; without it 0/0 would be NaN).

The GRPO family of 2025, as switches of ``grpo_loss`` and ``GRPOConfig`` (TRL 1.16's names):

- DAPO (Yu et al. 2025, "DAPO"): clip-higher, clip(rho, 1 - eps, 1 + eps_high) with eps_high > eps
  (eq. dapo-loss; TRL's ``epsilon_high``); dynamic sampling (groups whose rewards are all equal
  leave the loss); over-long responses masked out of the loss (TRL's ``mask_truncated_completions``)
  or softly punished in the reward (``soft_overlong_punishment``, DAPO eq. 13); and the token-level
  aggregation ``loss_type="dapo"``.
- GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one ratio per response,
  s_i = exp(mean_t log rho_{i,t}), clipped as a whole (eq. gspo-ratio; TRL's
  ``importance_sampling_level="sequence"``).
- The KL term as a loss with the k1, k2 or k3 estimator (``kl_estimator``; chapter 6's
  ``kl_term_gradients`` says which KL each one's gradient follows).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .groups import (check_group_size, check_groups, check_inputs, group_metrics, relative_advantages,
                     reuses_scoring_pass, sample_groups, score_groups, step_seed)
from .kl import exact_kl, k3, kl_estimators
from .ppo import clipped_surrogate
from .trainer import (MAX_EPOCHS, MAX_STEPS, Config, History, Timer, TrainResult, atomic, check_bool, check_count,
                      make_config, progress, run_guard,
                      trainable_copy, training_scope)
from .utils import (check_binary, check_choice, check_finite, check_in_range, check_positive, check_positive_int, check_seed,
                    check_same_shape, check_tensor)

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean_j r_j) / (std_j r_j + eps) per group (eq. grpo-adv), [B, G] -> [B, G].

    ``std`` is the unbiased sample std (as ``torch.std`` and TRL); ``scale=False`` keeps only the
    centring (Dr. GRPO). A group with all rewards equal gets advantages exactly 0. ``rewards`` as
    ``groups.check_groups`` accepts them (NaN, inf and fewer than 2 samples are refused); ``scale``
    must be True or False, ``eps`` > 0. The formula is ``groups.relative_advantages``.
    """
    rewards = check_groups("rewards", rewards)
    scale = check_bool("scale", scale)
    eps = check_positive("eps", eps)
    return relative_advantages(rewards, scale, eps)


class GRPOLoss(NamedTuple):
    """The loss to minimise and, detached, its parts: ``policy_loss`` (clipped surrogate term),
    ``kl`` (mean k3 per token), ``clip_ratio`` (fraction of tokens whose ratio is clipped)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_ratio: torch.Tensor


def _aggregate(per_token, mask, loss_type, max_length):
    if loss_type == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * max_length)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _ratio(log_ratio, mask, level):
    """rho_{i,t} = exp(log rho_{i,t}) ("token"), or GSPO's s_i = exp(sum_t m_t log rho_{i,t} / len(y_i))
    broadcast over the tokens ("sequence", eq. gspo-ratio), as TRL 1.16's ``_compute_loss``."""
    if level == "token":
        return torch.exp(log_ratio)
    seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.exp(seq).expand_as(log_ratio)


def _surrogate(ratio, advantages, eps, eps_high):
    """min(rho A, clip(rho, 1 - eps, 1 + eps_high) A): PPO's ``clipped_surrogate`` when eps_high = eps,
    DAPO's clip-higher (eq. dapo-loss) otherwise."""
    if eps_high == eps:
        return clipped_surrogate(ratio, advantages, eps)
    return torch.min(ratio * advantages, ratio.clamp(1.0 - eps, 1.0 + eps_high) * advantages)


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, beta: float = 0.04, eps: float = 0.2, loss_type: str = "grpo",
              max_length: int | None = None, *, eps_high: float | None = None,
              importance_sampling_level: str = "token", kl_estimator: str = "k3") -> GRPOLoss:
    """GRPO's loss (eq. grpo-loss) over a batch of responses, averaged as ``loss_type`` says.

    ``logp`` (with gradient), ``logp_old`` and ``logp_ref`` are per-token log-probabilities [N, T],
    ``mask`` [N, T] marks the response tokens, ``advantages`` [N] one per response. ``max_length``
    is Dr. GRPO's constant (default T). The surrogate is ``rlnotes.ppo.clipped_surrogate``, the
    KL term ``rlnotes.kl.k3``. The 2025 switches (TRL 1.16's names in brackets): ``eps_high``
    [``epsilon_high``], DAPO's clip-higher, clip(rho, 1 - eps, 1 + eps_high) (eq. dapo-loss; None:
    eps); ``importance_sampling_level`` [same], "token" (GRPO) or "sequence" (GSPO, Zheng et al.
    2025: one ratio s_i = exp(mean_t log rho_{i,t}) per response, eq. gspo-ratio); ``kl_estimator``
    "k1", "k2" or "k3" (``rlnotes.kl.kl_estimators``; TRL has k3 only) for the beta term. A response
    whose ``mask`` row is all 0 (TRL's ``mask_truncated_completions``) adds 0 to the loss. Refused:
    arguments that are not tensors (TypeError); shapes that differ, no response (N = 0),
    log-probabilities or advantages that are NaN or inf, a ``mask`` that is not 0/1, ``max_length``
    < T, ``eps_high`` < ``eps``, an unknown level or estimator (ValueError).
    """
    for name, x in (("logp", logp), ("logp_old", logp_old), ("logp_ref", logp_ref), ("advantages", advantages),
                    ("mask", mask)):
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    check_same_shape(logp=logp, logp_old=logp_old, logp_ref=logp_ref, mask=mask)
    if logp.ndim != 2 or advantages.shape != logp.shape[:1] or len(advantages) == 0:
        raise ValueError(f"logp must be [N, T] with N >= 1 and advantages [N], got shapes {tuple(logp.shape)} "
                         f"and {tuple(advantages.shape)}")
    for name, x in (("logp", logp), ("logp_old", logp_old), ("logp_ref", logp_ref), ("advantages", advantages)):
        check_finite(name, x.detach())
    check_binary("mask", mask)
    beta = check_in_range("beta", beta, 0.0, math.inf)
    eps = check_positive("eps", eps)
    eps_high = eps if eps_high is None else check_in_range("eps_high", eps_high, eps, math.inf)
    loss_type = check_choice("loss_type", loss_type, LOSS_TYPES)
    level = check_choice("importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    kl_estimator = check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    max_length = logp.shape[1] if max_length is None else check_positive_int("max_length", max_length, logp.shape[1])
    mask = mask.to(logp.dtype)
    ratio = _ratio(logp - logp_old, mask, level)
    surrogate = _surrogate(ratio, advantages[:, None].expand_as(ratio), eps, eps_high)
    kl = k3(logp, logp_ref) if kl_estimator == "k3" else kl_estimators(logp, logp_ref)[kl_estimator]
    loss = _aggregate(-surrogate + beta * kl, mask, loss_type, max_length)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        policy_loss = _aggregate(-surrogate, mask, loss_type, max_length)
        kl = kl if kl_estimator == "k3" else k3(logp, logp_ref)
        clipped = ((ratio - 1 > eps_high) | (1 - ratio > eps)).to(mask.dtype)
        return GRPOLoss(loss, policy_loss, (kl * mask).sum() / n, (clipped * mask).sum() / n)


def soft_overlong_punishment(lengths, max_length: int, cache: int) -> torch.Tensor:
    """DAPO's soft over-long punishment (Yu et al. 2025, eq. 13), one reward term per response:
    0 for len(y) <= L_max - L_cache, ((L_max - L_cache) - len(y)) / L_cache up to L_max, -1 beyond;
    TRL's ``get_soft_overlong_punishment`` (in ``trl.rewards``), whose arguments are ``max_completion_len``
    and ``soft_punish_cache``.
    Add it to a ``reward_fn``'s score. ``lengths``: the responses' token counts (a list, array or
    1-D tensor of whole numbers >= 0); ``max_length`` (L_max) >= 1; ``cache`` (L_cache) in
    [0, max_length]. Returns a float tensor [N]."""
    max_length = check_positive_int("max_length", max_length)
    cache = check_positive_int("cache", cache, 0)
    if cache > max_length:
        raise ValueError(f"cache must be in [0, max_length={max_length}], got {cache}")
    try:
        n = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        n = None
    if n is None or n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
        raise TypeError(f"lengths must be a 1-D list, array or tensor of token counts (whole numbers >= 0), got "
                        f"{type(lengths).__name__} {reprlib.repr(lengths)}")
    if n.ndim != 1 or bool((n < 0).any()):
        raise ValueError(f"lengths must be 1-D token counts >= 0, got shape {tuple(n.shape)}: {reprlib.repr(lengths)}")
    n, start = n.double(), max_length - cache
    ramp = (start - n) / cache if cache > 0 else torch.zeros_like(n)
    return torch.where(n <= start, 0.0, torch.where(n <= max_length, ramp, -1.0)).float()


def _as_logits(name, value) -> torch.Tensor:
    """``value`` as a tensor of real numbers; ``TypeError`` naming ``name`` for anything else."""
    try:
        if value is None or isinstance(value, (str, bytes)):
            raise TypeError
        out = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        out = None
    if out is None or out.dtype == torch.bool or out.is_complex():
        raise TypeError(f"{name} must be a 1-D tensor, array or list of K real numbers, got {type(value).__name__} "
                        f"{reprlib.repr(value)}")
    return out


def kl_term_gradients(logits: torch.Tensor, ref_logits: torch.Tensor) -> dict:
    """Expected gradients w.r.t. the logits of pi = softmax(logits) of the ways to put a KL into training,
    exact over the K outcomes (y ~ pi, one state):

    ``k1_loss``: E[grad (log pi(y) - log pi_ref(y))] = 0 (a k1 LOSS term has no expected gradient);
    ``k1_reward``: E[(log pi(y) - log pi_ref(y)) grad log pi(y)], k1 as a reward (score function);
    ``k3_loss``: E[grad k3(y)], GRPO's loss term; and the gradients of the two KLs by autograd,
    ``reverse`` = grad KL(pi || pi_ref) and ``forward`` = grad KL(pi_ref || pi). In exact
    arithmetic k1_reward = reverse and k3_loss = forward.

    ``logits`` and ``ref_logits``: one state's K logits each (a tensor, array or list); refused
    (ValueError) unless both are 1-D of one length K >= 1 and finite, and (TypeError) unless they
    hold real numbers.
    """
    logits, ref_logits = _as_logits("logits", logits), _as_logits("ref_logits", ref_logits)
    check_same_shape(logits=logits, ref_logits=ref_logits)
    if logits.ndim != 1 or len(logits) == 0:
        raise ValueError(f"logits must be one state's logits, 1-D [K], got shape {tuple(logits.shape)}")
    check_finite("logits", logits)
    check_finite("ref_logits", ref_logits)
    theta = logits.detach().double().requires_grad_(True)
    ref = torch.log_softmax(ref_logits.detach().double(), -1)
    logp = torch.log_softmax(theta, -1)
    p = logp.exp().detach()

    def grad(f):
        return torch.autograd.grad(f, theta, retain_graph=True)[0]

    return {"k1_loss": grad((p * (logp - ref)).sum()), "k1_reward": grad((p * (logp - ref).detach() * logp).sum()),
            "k3_loss": grad((p * k3(logp, ref)).sum()), "reverse": grad(exact_kl(logp, ref)),
            "forward": grad(exact_kl(ref, logp))}


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(Config):
    """GRPO: ``steps`` updates, each on ``batch_size`` prompts with ``num_generations`` responses
    each; ``epochs`` passes (TRL's ``num_iterations``) in minibatches of ``minibatch_size``
    responses (None: the whole batch) of Adam at ``lr``; clip range ``eps``, KL coefficient
    ``beta`` (a loss term, k3 per token), ``loss_type`` ("grpo", "dr_grpo", "dapo"),
    ``scale_rewards`` (divide by the group's std), ``max_grad_norm``, ``seed``, ``progress``.

    The 2025 switches (``grpo_loss``; TRL 1.16's names, defaults = plain GRPO): ``eps_high``
    (DAPO's clip-higher, TRL's ``epsilon_high``; None: ``eps``; DAPO uses 0.28),
    ``importance_sampling_level`` ("token", or "sequence" for GSPO), ``mask_truncated_completions``
    (responses cut at the task's ``max_response_tokens`` without an end token leave the loss),
    ``kl_estimator`` ("k1", "k2", "k3") and ``dynamic_sampling``: DAPO's dynamic sampling drops the
    groups whose rewards are all equal (zero std, so zero advantage) and re-samples until the batch
    is full; here the sample budget stays fixed, so the update runs on the groups kept (logged as
    ``frac_groups_kept``) and is skipped when none is."""

    seed: int = 0
    steps: int = 30
    batch_size: int = 8
    num_generations: int = 4
    epochs: int = 1
    minibatch_size: int | None = None
    lr: float = 2e-3
    beta: float = 0.04
    eps: float = 0.2
    loss_type: str = "grpo"
    scale_rewards: bool = True
    max_grad_norm: float | None = 1.0
    eps_high: float | None = None
    importance_sampling_level: str = "token"
    mask_truncated_completions: bool = False
    dynamic_sampling: bool = False
    kl_estimator: str = "k3"
    progress: bool = False

    def __post_init__(self):
        self.check("seed", check_seed)
        self.check("steps", check_count, MAX_STEPS, "MAX_STEPS")
        self.check("epochs", check_count, MAX_EPOCHS, "MAX_EPOCHS")
        for name in ("batch_size", "minibatch_size"):
            self.check(name, check_positive_int)
        self.check("num_generations", check_positive_int, 2)
        check_group_size(self.batch_size, self.num_generations)
        self.check("lr", check_positive)
        self.check("beta", check_in_range, 0.0, math.inf)
        self.check("eps", check_positive)
        self.check("eps_high", check_in_range, self.eps, math.inf)
        self.check("importance_sampling_level", check_choice, IMPORTANCE_SAMPLING_LEVELS)
        for name in ("mask_truncated_completions", "dynamic_sampling"):
            self.check(name, check_bool)
        self.check("kl_estimator", check_choice, KL_ESTIMATORS)
        self.check("loss_type", check_choice, LOSS_TYPES)
        self.check("scale_rewards", check_bool)
        self.check("max_grad_norm", check_positive)
        self.check("progress", check_bool)


def train(prepared, config: GRPOConfig | None = None, *, reward_fn=None, **overrides) -> TrainResult:
    """GRPO (DeepSeekMath, Algorithm 1 with one reference model) on ``prepared``'s task from pi_ref.

    ``reward_fn(prompts, responses) -> [N]`` defaults to the verifiable reward r*
    (``prepared.task.true_rewards``): no reward model, and no value network. What it returns must
    pass ``check_rewards`` (one finite number per response). Each step samples
    ``num_generations`` responses per prompt, takes the group advantages (eq. grpo-adv) and runs
    ``epochs`` passes of minibatch Adam steps on ``grpo_loss``. Dr. GRPO's max length is the
    task's ``max_response_tokens``. Logs ``loss``, ``reward``, ``reward_std``,
    ``frac_reward_zero_std``, ``kl/k3_per_token`` (the loss's KL term, last minibatch),
    ``kl/exact_per_sequence``, ``entropy``, ``clip_ratio/region_mean``, ``completions/mean_length``,
    ``completions/clipped_ratio``, ``r_star``, ``frac_groups_kept`` (1 without ``dynamic_sampling``),
    ``seconds``. The 2025 switches are ``GRPOConfig``'s. Returns a ``TrainResult``.

    Refused: what ``groups.check_inputs`` refuses, and sizes above ``groups.MAX_GROUP_SAMPLES``,
    ``trainer.MAX_STEPS``, ``trainer.MAX_EPOCHS`` (ValueError). Runs and stops as the training contract
    says (CONTRIBUTING.md).
    """
    cfg = make_config(GRPOConfig, config, **overrides)
    task, tok, ref, reward_fn = check_inputs(prepared, reward_fn)
    G, n = cfg.num_generations, cfg.batch_size * cfg.num_generations
    mb = n if cfg.minibatch_size is None else min(cfg.minibatch_size, n)
    history = History()
    result = TrainResult(None, history, cfg)  # until the policy exists
    with run_guard(lambda: result, lambda: result.model is None or result.model.eval()), \
            training_scope(cfg.seed):
        policy = trainable_copy(ref)
        result = TrainResult(policy, history, cfg)
        reuse = reuses_scoring_pass(policy, cfg.epochs, mb >= n)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        gen = torch.Generator(device=prepared.device).manual_seed(cfg.seed)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        for step in progress(range(cfg.steps), cfg.progress, desc="grpo"):
            with atomic():
                with Timer() as timer:
                    prompts = task.prompts(cfg.batch_size, step_seed(cfg.seed, step))
                    g = sample_groups(policy, ref, tok, prompts, G, task.max_response_tokens, gen, keep_graph=reuse)
                    reward, r_star = score_groups(task, reward_fn, g)
                    adv = group_advantages(reward.view(-1, G), cfg.scale_rewards).view(-1)
                    rows = kept_rows(reward, G) if cfg.dynamic_sampling else torch.arange(n)
                    mask = g.mask * g.finished[:, None] if cfg.mask_truncated_completions else g.mask
                    out = _update(cfg, policy, opt, g, adv, mask, rows.to(g.ids.device), mb, reuse, shuffle,
                                  task.max_response_tokens)
                history.log({"loss": out.loss, **group_metrics(g, reward, r_star, G),
                             "kl/k3_per_token": out.kl, "clip_ratio/region_mean": out.clip_ratio,
                             "frac_groups_kept": len(rows) / n, "seconds": timer.seconds})
    return result


def kept_rows(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025, eq. 11's constraint 0 < #correct < G): the indices
    of the responses whose group of ``k`` rewards is not all equal, [n_kept]. ``rewards`` [B k]
    flat; ``k`` >= 2 dividing its length."""
    rewards = check_tensor("rewards", rewards)
    check_finite("rewards", rewards)
    k = check_positive_int("k", k, 2)
    if rewards.ndim != 1 or len(rewards) % k:
        raise ValueError(f"rewards must be 1-D with a length divisible by k={k}, got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, k)
    varies = ~(grouped == grouped[:, :1]).all(1)
    return torch.arange(len(rewards)).view(-1, k)[varies].flatten()


def _update(cfg, policy, opt, g, adv, mask, rows, mb, reuse, shuffle, max_length):
    """``cfg.epochs`` passes of minibatch Adam steps on ``grpo_loss`` over the responses ``rows``;
    the last minibatch's ``GRPOLoss`` (zeros when ``rows`` is empty: no step)."""
    n, out = len(g.ids), None
    if len(rows) == 0:
        zero = torch.zeros(())
        return GRPOLoss(zero, zero, zero, zero)
    for _ in range(cfg.epochs):
        order = rows[torch.randperm(len(rows), generator=shuffle)] if mb < n else rows
        for idx in order.split(mb):
            logp = g.first_pass if reuse else g.token_logprobs(policy, idx if mb < n else None)
            if len(rows) < n and mb >= n:
                logp = logp[idx]
            out = grpo_loss(logp, g.logp[idx], g.ref_logp[idx], adv[idx], mask[idx], cfg.beta, cfg.eps,
                            cfg.loss_type, max_length, eps_high=cfg.eps_high,
                            importance_sampling_level=cfg.importance_sampling_level, kl_estimator=cfg.kl_estimator)
            opt.zero_grad()
            out.loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
    return out
