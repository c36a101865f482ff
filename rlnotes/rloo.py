"""Chapter 6: REINFORCE Leave-One-Out (RLOO), and the exact bias and variance of group baselines.

Sample k responses y_1..y_k ~ pi(.|x) per prompt. The baseline of sample i is the mean reward of
the OTHER k - 1 samples (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
Ahmadian et al. 2024, "Back to basics", eq. 7):

    A_i = R_i - 1/(k-1) sum_{j != i} R_j = k/(k-1) (R_i - mean_j R_j)          (eq. rloo-adv)

It does not depend on y_i, so E[A_i grad log pi(y_i|x)] = E[R_i grad log pi(y_i|x)]: the
estimator stays unbiased. The plain group mean, which includes R_i, scales the expected
gradient by (k-1)/k (``exact_estimator_moments`` computes both exactly on a softmax bandit).
RLOO is REINFORCE on whole responses; the KL to pi_ref enters the reward as in chapter 4,
R_i = r(x, y_i) - beta sum_t log(pi(y_t|s_t) / pi_ref(y_t|s_t)) (the k1 estimate per sequence).

The groups of samples, shared with GRPO, live in ``rlnotes.groups``. ``train`` is the RLOO trainer
(TRL's ``RLOOTrainer`` with one update per batch).
"""

from __future__ import annotations

import itertools
import math
import reprlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import lm, sentiment
from .groups import (check_group_size, check_groups, check_inputs, group_metrics, relative_advantages,
                     reuses_scoring_pass, sample_groups, score_groups, step_seed)
from .trainer import (MAX_STEPS, Config, History, Timer, TrainResult, atomic, check_bool, check_count,
                      make_config, progress, run_guard,
                      trainable_copy, training_scope)
from .measure import check_causal_lm
from .prepare import check_prepared
from .utils import check_finite, check_in_range, check_positive, check_positive_int, check_seed, check_same_shape


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean_{j != i} R_j for each of the k samples of each prompt (eq. rloo-adv), [B, k] -> [B, k].

    ``rewards`` as ``check_groups`` accepts them (NaN, inf and fewer than 2 samples are refused).
    """
    rewards = check_groups("rewards", rewards)
    k = rewards.shape[1]
    return rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)


def rloo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean_i exp(log pi(y_i|x) - log pi_old(y_i|x)) A_i over whole responses, [N] each.

    At pi = pi_old its value is -mean A and its gradient -mean A_i grad log pi(y_i|x): REINFORCE
    with the leave-one-out baseline, written as TRL's RLOO writes it (a sequence-level ratio).
    Refused: arguments that are not tensors (TypeError), shapes that differ, no response (N = 0)
    and log-probabilities or advantages that are NaN or inf (ValueError).
    """
    for name, x in (("logp", logp), ("logp_old", logp_old), ("advantages", advantages)):
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a tensor [N], got {type(x).__name__}")
    check_same_shape(logp=logp, logp_old=logp_old, advantages=advantages)
    if advantages.numel() == 0:
        raise ValueError("rloo_loss needs at least one response, got N = 0 (the mean would be NaN)")
    check_finite("logp", logp.detach())
    check_finite("logp_old", logp_old.detach())
    check_finite("advantages", advantages.detach())
    return -(torch.exp(logp - logp_old) * advantages).mean()


# ------------------------------------------------------------- the bias of a baseline, exactly

# The exact sum of ``exact_estimator_moments`` holds about four float64 tensors of K^k x k x K numbers.
MAX_EXACT_BYTES = 2 ** 30


def exact_estimator_moments(probs, rewards, k: int) -> dict:
    """Mean and total variance of four policy-gradient estimators on a softmax bandit, exactly.

    The policy is pi = softmax(theta) over K responses with rewards r; one estimate draws k
    responses and averages A_i grad_theta log pi(y_i) with grad log pi(a) = e_a - pi, for A_i =
    r_i (``none``), r_i - mean_j r_j (``group_mean``, the sample included), r_i - mean_{j != i} r_j
    (``leave_one_out``) and (r_i - mean) / (std + 1e-4) (``group_std``, GRPO's). The expectation
    is a sum over all K^k draws, so ``mean`` is exact; ``true`` is grad J = pi * (r - pi . r).
    Returns ``true`` [K] and, per estimator, ``mean`` [K] and ``variance`` (E||g - E g||^2).

    Refused (ValueError): ``probs`` that is not a distribution over K >= 1 responses (1-D, finite,
    >= 0, summing to 1 within 1e-5), ``rewards`` of another shape or not finite, k < 2, and a k
    whose sum would hold more than ``MAX_EXACT_BYTES`` (1 GiB; the message names the largest k).
    """
    probs, rewards = _as_float64("probs", probs), _as_float64("rewards", rewards)
    _check_distribution("probs", probs)
    check_same_shape(probs=probs, rewards=rewards)
    check_finite("rewards", rewards)
    k = check_positive_int("k", k, 2)
    K = len(probs)
    _check_exact_size(K, k)
    draws = torch.tensor(list(itertools.product(range(K), repeat=k)))           # [K^k, k]
    weight = probs[draws].prod(1)                                                # P(draw)
    r = rewards[draws]
    score = F.one_hot(draws, K).double() - probs                                 # grad log pi(y_i), [D, k, K]
    centred = r - r.mean(1, keepdim=True)
    adv = {"none": r, "group_mean": centred, "leave_one_out": rloo_advantages(r),
           "group_std": relative_advantages(r, True, 1e-4)}  # grpo.group_advantages(r)
    out = {"true": probs * (rewards - (probs * rewards).sum())}
    for name, a in adv.items():
        g = (a[..., None] * score).mean(1)                                       # one estimate per draw, [D, K]
        mean = (weight[:, None] * g).sum(0)
        out[name] = {"mean": mean, "variance": float((weight * ((g - mean) ** 2).sum(1)).sum())}
    return out


def _as_float64(name, value) -> torch.Tensor:
    """``value`` (a tensor, array or list of real numbers) as a float64 tensor; ``TypeError`` naming ``name``."""
    if torch.is_tensor(value):
        real = value.dtype != torch.bool and not value.is_complex()
    else:
        try:
            real = np.asarray(value).dtype.kind in "iuf"
        except (TypeError, ValueError):  # ragged lists
            real = False
    if not real:
        raise TypeError(f"{name} must be a 1-D tensor, array or list of real numbers, got {type(value).__name__} "
                        f"{reprlib.repr(value)}")
    return torch.as_tensor(value, dtype=torch.float64)


def _check_distribution(name, probs):
    if probs.ndim != 1 or len(probs) == 0:
        raise ValueError(f"{name} must be a 1-D distribution over K >= 1 responses, got shape {tuple(probs.shape)}")
    check_finite(name, probs)
    if bool((probs < 0).any()) or abs(float(probs.sum()) - 1.0) > 1e-5:
        raise ValueError(f"{name} must be >= 0 and sum to 1, got {reprlib.repr(probs.tolist())} "
                         f"(sum {float(probs.sum()):.6g})")


def _log_exact_bytes(K: int, k: int) -> float:
    return k * math.log(K) + math.log(32 * k * K)


def _check_exact_size(K: int, k: int) -> None:
    """Refuse a k whose K^k draws would not fit in ``MAX_EXACT_BYTES``, naming the largest k that does."""
    limit = math.log(MAX_EXACT_BYTES)
    need = _log_exact_bytes(K, k)
    if need <= limit:
        return
    largest = MAX_EXACT_BYTES // 32 if K == 1 else 1
    while K > 1 and _log_exact_bytes(K, largest + 1) <= limit:
        largest += 1
    size = f"about {math.exp(need) / 2 ** 30:.3g} GiB" if need < 700 else "more than 10^300 bytes"
    fix = f"use k <= {largest} for K = {K}" if largest >= 2 else f"even k = 2 does not fit K = {K} responses"
    raise ValueError(f"k = {k} needs a sum over all {K}^{k} draws, {size}; exact_estimator_moments allows "
                     f"MAX_EXACT_BYTES = {MAX_EXACT_BYTES / 2 ** 30:g} GiB: {fix}")


def gradient_variance(policy, prepared, prompts: list[str], *, k: int = 4, repeats: int = 16,
                      value_samples: int = 64, shift: float = 2.0, seed: int = 0) -> dict:
    """Spread of the policy-gradient estimate g = mean_i A_i grad log pi(y_i|x) of a causal LM, per baseline.

    One estimate draws ``k`` responses for each of ``prompts`` from ``policy`` and scores them by
    r*; ``repeats`` estimates on the same prompts give, per baseline, ``variance`` (the trace of
    the covariance of g over all parameters, E||g - E g||^2, unbiased over the repeats) and
    ``mean`` (the mean of g, flattened). The advantages: ``none`` (A = r*), ``none_shifted``
    (A = r* + ``shift``: the same task with another zero of the reward), ``value`` (r* - V(x), with
    V(x) the mean r* of ``value_samples`` separate samples per prompt: a per-prompt value fitted
    on held-out samples, not a learned network), ``group_mean`` (the sample included) and
    ``leave_one_out``. The baselined estimators are the same for r* and r* + shift.
    Refused: ``prepared`` that is not a ``Prepared``, k < 2, repeats < 2, value_samples < 1, a
    ``shift`` that is not a finite number, a negative or non-integer ``seed``, a ``policy`` with no
    parameter that requires a gradient (ValueError: pass ``trainer.trainable_copy(prepared.sft)``),
    ``len(prompts)`` times ``k`` or ``value_samples`` above ``groups.MAX_GROUP_SAMPLES``.
    """
    task, tok = check_prepared("prepared", prepared).task, prepared.tokenizer
    k, repeats = check_positive_int("k", k, 2), check_positive_int("repeats", repeats, 2)
    value_samples = check_positive_int("value_samples", value_samples)
    shift = check_in_range("shift", shift, -math.inf, math.inf)
    params = _gradient_params(policy)
    prompts = sentiment.check_texts("prompts", prompts)
    check_group_size(len(prompts), k, "len(prompts)", "k")
    check_group_size(len(prompts), value_samples, "len(prompts)", "value_samples")
    gen = torch.Generator(device=params[0].device).manual_seed(check_seed("seed", seed))
    held = sample_groups(policy, policy, tok, prompts, value_samples, task.max_response_tokens, gen)
    value = task.true_rewards(held.prompts, held.text).view(len(prompts), value_samples).mean(1, keepdim=True)
    grads = {}
    for _ in range(repeats):
        g = sample_groups(policy, policy, tok, prompts, k, task.max_response_tokens, gen)
        r = task.true_rewards(g.prompts, g.text).view(len(prompts), k)
        advantages = {"none": r, "none_shifted": r + shift, "value": r - value,
                      "group_mean": r - r.mean(1, keepdim=True), "leave_one_out": rloo_advantages(r)}
        logp = lm.token_logprobs(policy, *g.tensors(slice(None))).sum(1)
        for name, a in advantages.items():
            grad = torch.autograd.grad((a.reshape(-1).to(logp) * logp).mean(), params, retain_graph=True)
            grads.setdefault(name, []).append(torch.cat([x.flatten() for x in grad]))
    out = {}
    for name, gs in grads.items():
        G = torch.stack(gs)
        mean = G.mean(0)
        out[name] = {"variance": float(((G - mean) ** 2).sum(1).sum() / (repeats - 1)), "mean": mean}
    return out


def _gradient_params(policy) -> list:
    """The parameters of ``policy`` that ``gradient_variance`` differentiates: those with ``requires_grad``."""
    params = [p for p in check_causal_lm("policy", policy).parameters() if p.requires_grad]
    if not params:
        raise ValueError("policy has no parameter that requires a gradient (a frozen model, such as prepared.sft): "
                         "pass a trainable copy, e.g. trainer.trainable_copy(prepared.sft)")
    return params


# ------------------------------------------------------------------------------- the trainer

@dataclass(frozen=True, kw_only=True)
class RLOOConfig(Config):
    """RLOO: ``steps`` updates, each on ``batch_size`` prompts with ``num_generations`` samples each (k; one Adam
    step at ``lr`` on the whole batch), KL coefficient ``beta`` in the reward, gradient-norm
    clipping ``max_grad_norm`` (None: none), ``seed``, ``progress``."""

    seed: int = 0
    steps: int = 30
    batch_size: int = 8
    num_generations: int = 4
    lr: float = 2e-3
    beta: float = 0.05
    max_grad_norm: float | None = 1.0
    progress: bool = False

    def __post_init__(self):
        self.check("seed", check_seed)
        self.check("steps", check_count, MAX_STEPS, "MAX_STEPS")
        self.check("batch_size", check_positive_int)
        self.check("num_generations", check_positive_int, 2)
        check_group_size(self.batch_size, self.num_generations)
        self.check("lr", check_positive)
        self.check("beta", check_in_range, 0.0, math.inf)
        self.check("max_grad_norm", check_positive)
        self.check("progress", check_bool)


def train(prepared, config: RLOOConfig | None = None, *, reward_fn=None, **overrides) -> TrainResult:
    """RLOO on ``prepared``'s task (``rlnotes.prepare.Prepared``), starting from pi_ref = ``prepared.sft``.

    ``reward_fn(prompts, responses) -> [N]`` is the reward (default: the verifiable r*,
    ``prepared.task.true_rewards``); what it returns must pass ``check_rewards`` (one finite number
    per response). Each step samples ``num_generations`` (k) responses for each of ``batch_size``
    train prompts, sets R_i = reward - beta * sum_t log(pi_old / pi_ref), takes the leave-one-out
    advantages (eq. rloo-adv) and one Adam step on ``rloo_loss``. Logs ``loss``, ``reward``
    (mean R before the KL term), ``reward_std`` (mean over groups), ``frac_reward_zero_std``,
    ``kl/k1_per_sequence``, ``kl/exact_per_sequence``, ``entropy``, ``completions/mean_length``,
    ``completions/clipped_ratio``, ``r_star``, ``seconds``. Returns a ``TrainResult``.

    Refused: what ``groups.check_inputs`` refuses, and sizes above ``groups.MAX_GROUP_SAMPLES``,
    ``trainer.MAX_STEPS`` (ValueError). Runs and stops as the training contract says (CONTRIBUTING.md).
    """
    cfg = make_config(RLOOConfig, config, **overrides)
    task, tok, ref, reward_fn = check_inputs(prepared, reward_fn)
    history = History()
    result = TrainResult(None, history, cfg)  # until the policy exists
    with run_guard(lambda: result, lambda: result.model is None or result.model.eval()), \
            training_scope(cfg.seed):
        policy = trainable_copy(ref)
        result = TrainResult(policy, history, cfg)
        reuse = reuses_scoring_pass(policy)  # one Adam step per batch
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        gen = torch.Generator(device=prepared.device).manual_seed(cfg.seed)
        for step in progress(range(cfg.steps), cfg.progress, desc="rloo"):
            with atomic():
                with Timer() as timer:
                    prompts = task.prompts(cfg.batch_size, step_seed(cfg.seed, step))
                    g = sample_groups(policy, ref, tok, prompts, cfg.num_generations, task.max_response_tokens, gen,
                                      keep_graph=reuse)
                    reward, r_star = score_groups(task, reward_fn, g)
                    k1 = (g.logp - g.ref_logp).sum(1)
                    adv = rloo_advantages((reward - cfg.beta * k1).view(-1, cfg.num_generations)).view(-1)
                    logp = (g.first_pass if reuse else g.token_logprobs(policy)).sum(1)
                    loss = rloo_loss(logp, g.logp.sum(1), adv)
                    opt.zero_grad()
                    loss.backward()
                    if cfg.max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                    opt.step()
                history.log({"loss": loss, **group_metrics(g, reward, r_star, cfg.num_generations),
                             "kl/k1_per_sequence": k1.mean(), "seconds": timer.seconds})
    return result
