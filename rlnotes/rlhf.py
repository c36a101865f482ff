"""Chapter 4, phase 3: KL-regularised PPO over the tokens of a language model.

Phases 1 and 2 (SFT, a Bradley-Terry reward model) live in ``rlnotes.sft`` and ``rlnotes.reward``,
run together by ``rlnotes.prepare``; the KL formulas in ``rlnotes.kl``; the measurements on held-out
prompts (``evaluate``, ``kl_to_ref``, ``compare_kl_estimators``) in ``rlnotes.measure``. This module
is the token-level MDP: the state s_t is the prompt and the tokens so far, the action is the next
token y_t, and the reward of eq. (rlhf-token-reward) arrives per token (the KL penalty) and at the
last token (r_phi).

- ``train(prepared, config=None, **overrides) -> TrainResult``: phase 3 from a ``prepare.Prepared``,
  as ``collect`` (sample, score, per-token rewards, GAE) then ``update`` (epochs of minibatch steps
  on -L^CLIP + c_1 L^VF).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import lm, sampling, sentiment
from .groups import reuses_scoring_pass, step_seed
from .kl import sequence_kl
from .nets import value_loss
from .ppo import clipped_surrogate
from .ppo import ratio as ppo_ratio
from .prepare import Prepared, check_prepared
from .returns import gae, normalize
from .reward import check_rewards
from .trainer import (MAX_EPOCHS, MAX_STEPS, Config, History, Timer, TrainResult, atomic, check_bool, check_count,
                      check_model, make_config, progress, run_guard,
                      training_scope)
from .utils import (check_binary, check_finite, check_in_range, check_positive, check_positive_int, check_seed,
                    check_same_shape, check_tensor)


# ------------------------------------------------------------ the token-level reward and KL

# The most responses one step of ``train`` samples (``RLHFConfig.batch_size``): 64 in the book; a
# step at the limit takes seconds on a CPU, and far larger batches would run for hours or exhaust memory.
MAX_BATCH_SIZE = 4096


def _check_tensors(**tensors) -> None:
    """``TypeError`` naming the argument unless each is a tensor, of a floating dtype except ``mask``."""
    for name, value in tensors.items():
        check_tensor(name, value, "any" if name == "mask" else "float")

def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token KL penalty -beta (log pi(y_t|s_t) - log pi_ref(y_t|s_t)), [B, T], 0 on padding.

    The first term of eq. (rlhf-token-reward). Refused (``ValueError``): shapes that differ, a
    ``logp`` or ``logp_ref`` that is not finite, a ``mask`` not of 0s and 1s, a negative ``beta``;
    arguments that are not tensors (TypeError; ``logp`` and ``logp_ref`` of a floating dtype).
    """
    _check_tensors(logp=logp, logp_ref=logp_ref, mask=mask)
    check_same_shape(logp=logp, logp_ref=logp_ref, mask=mask)
    check_in_range("beta", beta, 0.0, math.inf)
    check_finite("logp", logp)
    check_finite("logp_ref", logp_ref)
    check_binary("mask", mask)
    return -beta * (logp - logp_ref) * mask.to(logp.dtype)


def token_rewards(r_phi: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """r_t = -beta log(pi/pi_ref)(y_t|s_t) + [t = last] r_phi(x, y), [B, T] (eq. rlhf-token-reward).

    The sum over t is the sample estimate of r_phi - beta KL(pi || pi_ref) for the sequence.
    Refused: an ``r_phi`` that is not a tensor (TypeError), of another shape or not finite (ValueError).
    """
    if not torch.is_tensor(r_phi):
        raise TypeError(f"r_phi must be a tensor [B], got {type(r_phi).__name__}")
    check_finite("r_phi", r_phi)
    if r_phi.shape != mask.shape[:1]:
        raise ValueError(f"r_phi must be [B] = [{mask.shape[0]}], got shape {tuple(r_phi.shape)}")
    rewards = kl_penalty(logp, logp_ref, mask, beta)
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    return rewards.index_put((torch.arange(len(r_phi), device=r_phi.device), last), r_phi.to(rewards.dtype),
                             accumulate=True)


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float):
        self.beta = check_in_range("beta", beta, 0.0, math.inf)

    def update(self, kl: float, n_steps: int) -> float:
        return self.beta


class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta (1 + clip(KL / KL_target - 1, -0.2, 0.2) n / horizon) (eq. rlhf-adaptive).

    ``n`` (the samples behind this KL) must be <= ``horizon``, so that one update changes beta
    by at most 20% and beta stays positive; a KL that is not finite is refused, so beta is
    never NaN.
    """

    def __init__(self, beta: float, target: float, horizon: int = 2000):
        self.beta = check_positive("beta", beta)
        self.target = check_positive("kl_target", target)
        self.horizon = check_positive_int("horizon", horizon)

    def update(self, kl: float, n_steps: int) -> float:
        kl = check_in_range("kl", kl, -math.inf, math.inf)
        n_steps = check_positive_int("n_steps", n_steps)
        if n_steps > self.horizon:
            raise ValueError(f"n_steps must be <= horizon ({self.horizon}) so that beta stays positive, got {n_steps}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta


class PolicyWithValue(nn.Module):
    """pi_theta (a copy of the SFT model) and a linear value head V(s_t) reading its last hidden state.

    The value head's input is detached: the critic reads the policy's features but its loss does
    not flow into them, so a large value error early in training cannot disturb the policy.
    """

    def __init__(self, base_lm):
        super().__init__()
        self.lm = copy.deepcopy(base_lm).requires_grad_(True)
        self.value_head = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask):
        """(logits [B, T, V], log pi(y_t|s_t) [B, T] masked, V(s_t) [B, T]) for the response tokens."""
        logits, hidden = lm.response_logits(self.lm, prompt_ids, prompt_mask, response_ids, response_mask,
                                            output_hidden_states=True)
        logp = lm.logprobs_from_logits(logits, response_ids, response_mask)
        return logits, logp, self.value_head(hidden.detach().float()).squeeze(-1)


def ppo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """-L^CLIP over tokens: -mean_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t), rho_t = pi/pi_old, padding masked.

    The elementwise objective is chapter 3's ``ppo.clipped_surrogate`` (PPO paper, eq. 7); only the
    mean changes: it runs over the response tokens under ``mask``. Refused (ValueError): shapes
    that differ, a ``logp`` or ``old_logp`` that is not finite, a ``mask`` not of 0s and 1s or
    that marks no token (the mean of nothing); arguments that are not tensors (TypeError; all but
    ``mask`` of a floating dtype).
    """
    _check_tensors(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    check_finite("logp", logp)
    check_finite("old_logp", old_logp)  # named as here (ppo.ratio calls it logp_old)
    check_binary("mask", mask)
    if not bool((mask != 0).any()):
        raise ValueError(f"mask must mark at least one response token, got none (shape {tuple(mask.shape)})")
    surrogate = clipped_surrogate(ppo_ratio(logp, old_logp), advantages, eps)
    m = mask.to(surrogate.dtype)
    return -(surrogate * m).sum() / m.sum()


@dataclass(frozen=True, kw_only=True)
class RLHFConfig(Config):
    """Phase 3, PPO over tokens: ``steps`` collect-then-update iterations, each sampling one response
    for each of ``batch_size`` train prompts and taking ``epochs`` passes of minibatches of
    ``minibatch_size`` responses (None: the whole batch) of Adam (``lr``) on -L^CLIP (clip range
    ``eps``) + ``vf_coef`` L^VF, gradients clipped to ``max_grad_norm`` (None: not clipped); GAE(``gamma``, ``lam``) over
    the response's tokens. The KL coefficient is ``beta``, or, with ``kl_target``, the adaptive
    controller's starting value (``kl_horizon``). ``missing_eos_penalty`` is subtracted from the score
    of a response that never emits EOS."""

    beta: float = 0.3
    steps: int = 50
    seed: int = 0
    batch_size: int = 64
    epochs: int = 4
    minibatch_size: int | None = None
    lr: float = 7e-4
    eps: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    max_grad_norm: float | None = 1.0
    kl_target: float | None = None
    kl_horizon: int = 2000
    missing_eos_penalty: float = 2.0
    progress: bool = False

    def __post_init__(self):
        self.check("beta", check_in_range, 0.0, math.inf)
        self.check("steps", check_count, MAX_STEPS, "MAX_STEPS")
        self.check("epochs", check_count, MAX_EPOCHS, "MAX_EPOCHS")
        for name in ("batch_size", "minibatch_size", "kl_horizon"):
            self.check(name, check_positive_int)
        self.check("seed", check_seed)
        for name in ("lr", "eps", "max_grad_norm", "kl_target"):
            self.check(name, check_positive)
        self.check("gamma", check_in_range, 0.0, 1.0)
        self.check("lam", check_in_range, 0.0, 1.0)
        self.check("vf_coef", check_in_range, 0.0, math.inf)
        self.check("missing_eos_penalty", check_in_range, 0.0, math.inf)
        self.check("progress", check_bool)
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be <= MAX_BATCH_SIZE ({MAX_BATCH_SIZE}) responses per step, "
                             f"got {self.batch_size}")
        if self.minibatch_size is not None and self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size must be <= batch_size ({self.batch_size}), got {self.minibatch_size}")
        if self.kl_target is not None and self.batch_size > self.kl_horizon:
            raise ValueError(f"batch_size must be <= kl_horizon ({self.kl_horizon}) with the adaptive controller, "
                             f"got {self.batch_size}")
        if self.kl_target is not None and self.beta <= 0:
            raise ValueError(f"beta (the adaptive controller's starting value) must be > 0, got {self.beta}")


@dataclass
class TokenBatch:
    """One collected batch of phase 3: prompts and sampled responses (token ids, masks), the old
    log-probabilities, the advantages and value targets per token, and what was measured."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict
    first_pass: tuple[torch.Tensor, torch.Tensor] | None = None


@torch.no_grad()
def collect(policy: PolicyWithValue, prepared: Prepared, prompts: list[str], beta: float, cfg: RLHFConfig,
            generator: torch.Generator) -> TokenBatch:
    """Sample y ~ pi(.|x), score it (r_phi, minus ``missing_eos_penalty`` if unfinished), give each token
    the reward of eq. (rlhf-token-reward) and compute GAE advantages (normalised over the tokens).

    When ``update``'s first minibatch is the whole batch, the policy's forward pass here keeps its
    graph (``TokenBatch.first_pass``) and ``update`` back-propagates through it instead of running the
    same forward again (what TRL's trainers do when they take one step per batch)."""
    tok, ref, device = prepared.tokenizer, prepared.sft, prepared.device
    p, pm = lm.encode_prompts(tok, prompts, device)
    policy.eval()
    ids, mask = sampling.sample(policy.lm, tok, p, pm, prepared.task.max_response_tokens, generator=generator)
    # update uses the pass for its first step only (epochs=1), and it sees these parameters if it is the whole batch
    one_minibatch = cfg.minibatch_size is None or cfg.minibatch_size >= cfg.batch_size
    reuse = reuses_scoring_pass(policy, one_minibatch=one_minibatch)
    with torch.set_grad_enabled(reuse):
        logits, logp, values = policy(p, pm, ids, mask)
    first_pass = (logp, values) if reuse else None
    logits, old_logp, values = logits.detach(), logp.detach(), values.detach()
    logits_ref = lm.response_logits(ref, p, pm, ids, mask)
    ref_logp = lm.logprobs_from_logits(logits_ref, ids, mask)
    r_phi = check_rewards("prepared.reward_model", prepared.reward_model(p, pm, ids, mask), len(prompts), device)
    finished = (ids == tok.eos_token_id).logical_and(mask.bool()).any(dim=1)
    score = r_phi - cfg.missing_eos_penalty * (~finished).float()
    rewards = token_rewards(score, old_logp, ref_logp, mask, beta)
    dones = (torch.arange(ids.shape[1], device=device)[None, :] >= mask.sum(1, keepdim=True) - 1).float()
    adv, ret = gae(rewards.T, (values * mask).T, dones.T, torch.zeros(len(prompts), device=device), cfg.gamma, cfg.lam)
    adv, ret = adv.T, ret.T
    m = mask.bool()
    adv = torch.where(m, adv, torch.zeros_like(adv))
    adv[m] = normalize(adv[m])
    ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
    text = lm.decode_responses(tok, ids, mask)
    stats = {"r_phi": r_phi.mean(), "r_star": prepared.task.true_rewards(prompts, text).mean(),
             "kl/exact_per_sequence": sequence_kl(logits, logits_ref, mask).mean().item(),
             "kl/k1_per_sequence": ((old_logp - ref_logp) * mask).sum(1).mean(),
             "entropy": ((ent * mask).sum() / mask.sum()).item(),
             "distinct_1": sentiment.distinct_n(text, 1), "distinct_2": sentiment.distinct_n(text, 2),
             "completions/clipped_ratio": (~finished).float().mean()}
    return TokenBatch(p, pm, ids, mask, old_logp, adv, ret, stats, first_pass)


def update(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, batch: TokenBatch, cfg: RLHFConfig,
           generator: torch.Generator) -> float:
    """``epochs`` passes of minibatch Adam steps on -L^CLIP over tokens + c_1 L^VF; returns the last value loss.
    The first minibatch uses ``batch.first_pass`` when ``collect`` kept it."""
    policy.train()
    n = len(batch.ids)
    first_pass, batch.first_pass = batch.first_pass, None
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator).to(batch.ids.device)
        for idx in order.split(cfg.minibatch_size or n):
            if first_pass is not None:
                logp, values = first_pass[0][idx], first_pass[1][idx]
                first_pass = None
            else:
                _, logp, values = policy(batch.prompt_ids[idx], batch.prompt_mask[idx], batch.ids[idx], batch.mask[idx])
            pg = ppo_token_loss(logp, batch.old_logp[idx], batch.advantages[idx], batch.mask[idx], cfg.eps)
            v_loss = value_loss(values, batch.returns[idx], batch.mask[idx])
            loss = pg + cfg.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
    return v_loss.item()


def train(prepared: Prepared, config: RLHFConfig | None = None, **overrides) -> TrainResult:
    """Phase 3: PPO over tokens on max_pi E[r_phi(x, y)] - beta KL(pi || pi_ref) (eq. rlhf-objective).

    Arguments: those of ``RLHFConfig``, or a ``config``. Each step ``collect``s one response per
    prompt for ``batch_size`` train prompts (the KL penalty per token, r_phi at the last token, GAE
    over the response) and ``update``s the policy. A response that never emits EOS within
    ``task.max_response_tokens`` is cut off, and its score is r_phi - ``missing_eos_penalty`` (as
    TRL does): r_phi never saw unfinished text and would otherwise be gamed through it.

    Returns a ``TrainResult``: ``model`` is the fine-tuned causal LM, ``value_fn`` the
    ``PolicyWithValue`` (the LM and its value head). Logs per step: ``r_phi``, ``r_star``,
    ``kl/exact_per_sequence`` (see ``measure.kl_to_ref``), ``kl/k1_per_sequence`` (the summed log-ratio),
    ``entropy`` (per token), ``distinct_1``, ``distinct_2``, ``beta``, ``completions/clipped_ratio``
    (the fraction cut off without EOS), ``loss/value`` and ``seconds``.

    Refused: ``prepared`` that is not a complete ``Prepared`` (TypeError), a reward model whose
    scores are not one finite number per response (``reward.check_rewards``), ``batch_size`` above
    ``MAX_BATCH_SIZE``, ``steps`` above ``trainer.MAX_STEPS`` and ``epochs`` above ``trainer.MAX_EPOCHS``
    (ValueError), a ``prepared.sft`` in float16 (TypeError: the policy is its copy). It runs in
    ``trainer.training_scope``: a caller's
    ``torch.no_grad()`` or float64 default dtype does not reach it. An interrupt at any
    point after the checks raises ``TrainingInterrupted`` whose ``result`` is the ``TrainResult`` so far
    (``model`` and ``value_fn`` None if it came before they were made); each update and its log
    entry are applied whole.
    """
    cfg = make_config(RLHFConfig, config, **overrides)
    device = check_prepared("prepared", prepared).device
    check_model("prepared.sft", prepared.sft, trained=True)  # the policy is a copy in its dtype
    history = History()
    result = TrainResult(None, history, cfg)  # until the policy exists
    with run_guard(lambda: result, lambda: result.value_fn is None or result.value_fn.eval()), \
            training_scope(cfg.seed):
        policy = PolicyWithValue(prepared.sft).to(device)
        result = TrainResult(policy.lm, history, cfg, policy)
        opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        ctl = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target is not None
               else FixedKLController(cfg.beta))
        sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
        shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        for step in progress(range(cfg.steps), cfg.progress, desc="rlhf ppo"):
            with atomic():
                with Timer() as timer:
                    prompts = prepared.task.prompts(cfg.batch_size, step_seed(cfg.seed, step))
                    batch = collect(policy, prepared, prompts, ctl.beta, cfg, sample_gen)
                    v_loss = update(policy, opt, batch, cfg, shuffle_gen)
                    beta_used = ctl.beta
                    ctl.update(batch.stats["kl/exact_per_sequence"], cfg.batch_size)
                history.log({**batch.stats, "beta": beta_used, "loss/value": v_loss, "seconds": timer.seconds})
    return result
