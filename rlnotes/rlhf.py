"""Chapter 4: RLHF in three phases (SFT, a Bradley-Terry reward model, KL-regularised PPO over tokens).

Phases 1 and 2 live in ``rlnotes.sft`` and ``rlnotes.reward`` (their names are re-exported
here, so ``rlhf.train_sft`` and friends keep working); the KL formulas in ``rlnotes.kl``.
This module is phase 3, the token-level MDP: the state s_t is the prompt and the tokens so far,
the action is the next token y_t, and the reward of eq. (rlhf-token-reward) arrives per token
(the KL penalty) and at the last token (r_phi).

- ``prepare(seed=0, ...) -> Prepared``: phases 1 and 2, deterministic and cheap (seconds on a
  CPU): the task (r* is ``task.true_rewards``), ``tokenizer``, ``sft`` (pi^SFT = pi_ref, frozen),
  ``reward_model`` (r_phi, mean zero on pi^SFT's samples), ``train_prefs`` / ``test_prefs``,
  ``eval_prompts``, ``sft_history``, ``rm_history``. Chapter 5 reuses it; chapter 4 runs its steps
  one by one (``seed_streams``, ``train_sft``, ``preference_data``, ``train_reward_model``) and
  checks with ``Prepared.differences`` that they give the same objects.
- ``train_ppo(prepared, config=None, **kwargs) -> TrainResult``: phase 3, as ``collect`` (sample,
  score, per-token rewards, GAE) then ``update`` (epochs of minibatch steps on -L^CLIP + c_1 L^VF).
- ``evaluate``, ``kl_to_ref``, ``compare_kl_estimators``: measurements on held-out prompts.
"""

from __future__ import annotations

import copy
import math
import reprlib
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import lm
from .kl import exact_kl, kl_estimators, sequence_kl
from .nets import value_loss
from .ppo import clipped_surrogate
from .ppo import ratio as ppo_ratio
from .returns import gae, normalize
from .reward import (Preferences, RewardConfig, RewardModel, bt_probability, label_preferences,  # noqa: F401
                     preference_accuracy, reward_loss, sample_pairs, train_reward_model)
from .sft import SFTConfig, heldout_loss, kept_as_found, sft_loss, train_sft  # noqa: F401
from .trainer import (Config, History, Timer, TrainingInterrupted, TrainResult, atomic, check_bool, make_config,
                      progress, rng_scope, run_guard)
from .utils import (check_binary, check_finite, check_in_range, check_positive, check_positive_int, check_seed,
                    check_same_shape, get_device)


# ------------------------------------------------------------ the token-level reward and KL

def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token KL penalty -beta (log pi(y_t|s_t) - log pi_ref(y_t|s_t)), [B, T], 0 on padding.

    The first term of eq. (rlhf-token-reward). Refused (``ValueError``): shapes that differ, a
    ``logp`` or ``logp_ref`` that is not finite, a ``mask`` not of 0s and 1s, a negative ``beta``.
    """
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
    that marks no token (the mean of nothing).
    """
    check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    check_finite("logp", logp)
    check_finite("old_logp", old_logp)  # named as here (ppo.ratio calls it logp_old)
    check_binary("mask", mask)
    if not bool((mask != 0).any()):
        raise ValueError(f"mask must mark at least one response token, got none (shape {tuple(mask.shape)})")
    surrogate = clipped_surrogate(ppo_ratio(logp, old_logp), advantages, eps)
    m = mask.to(surrogate.dtype)
    return -(surrogate * m).sum() / m.sum()


@dataclass
class Prepared:
    """Phases 1 and 2, ready for phase 3 (and for chapter 5's DPO on the same data).

    An interrupted ``prepare`` hands back a partial one (``PrepareInterrupted.result``): the parts
    that exist, None for the rest; ``check_prepared`` refuses it where a complete one is needed.
    """

    task: lm.SentimentTask
    tokenizer: object
    sft: nn.Module
    reward_model: RewardModel
    train_prefs: Preferences
    test_prefs: Preferences
    eval_prompts: list
    sft_history: History
    rm_history: History
    sft_heldout: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.sft.parameters()).device

    def differences(self, other: "Prepared") -> list[str]:
        """The names of the fields in which ``other`` differs from this one (empty: the same phases 1 and 2).

        Models are compared tensor by tensor (parameters and buffers, bit for bit), preference
        data text by text and reward by reward, histories by their logged ``loss`` and
        ``accuracy``, the tokenizer by its vocabulary; ``task`` by its type.
        """
        if not isinstance(other, Prepared):
            raise TypeError(f"other must be a Prepared, got {type(other).__name__}")

        def same_model(a, b):
            sa, sb = a.state_dict(), b.state_dict()
            return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)

        def same_prefs(a, b):
            return (len(a) == len(b) and a.prompts == b.prompts and a.chosen == b.chosen and a.rejected == b.rejected
                    and torch.equal(a.r_chosen, b.r_chosen) and torch.equal(a.r_rejected, b.r_rejected))

        def same_history(a, b):
            keys = [k for k in ("loss", "accuracy") if k in a.updates or k in b.updates]
            return all(k in a.updates and k in b.updates and np.array_equal(a.update_array(k), b.update_array(k))
                       for k in keys)

        checks = {"task": type(self.task) is type(other.task),
                  "tokenizer": self.tokenizer.get_vocab() == other.tokenizer.get_vocab(),
                  "sft": same_model(self.sft, other.sft),
                  "reward_model": same_model(self.reward_model, other.reward_model),
                  "train_prefs": same_prefs(self.train_prefs, other.train_prefs),
                  "test_prefs": same_prefs(self.test_prefs, other.test_prefs),
                  "eval_prompts": list(self.eval_prompts) == list(other.eval_prompts),
                  "sft_history": same_history(self.sft_history, other.sft_history),
                  "rm_history": same_history(self.rm_history, other.rm_history),
                  "sft_heldout": self.sft_heldout == other.sft_heldout}
        return [name for name, same in checks.items() if not same]


def check_prepared(name: str, value) -> Prepared:
    """Return ``value`` if it is a complete ``Prepared`` (``rlhf.prepare``'s result); ``TypeError``
    naming ``name`` for anything else, ``ValueError`` for a partial one (an interrupted ``prepare``)."""
    if not isinstance(value, Prepared):
        raise TypeError(f"{name} must be a Prepared (from rlhf.prepare), got {type(value).__name__}")
    missing = [f.name for f in fields(Prepared) if getattr(value, f.name) is None]
    if missing:
        raise ValueError(f"{name} is a partial Prepared (from an interrupted rlhf.prepare): {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} None; run rlhf.prepare to the end")
    return value


def check_rewards(name: str, value, n: int, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``value``, what ``name`` returned for ``n`` responses, as a tensor [n] on ``device``.

    Accepted: a tensor, NumPy array, list or tuple of ``n`` real numbers (integers too), or one
    number when ``n`` is 1; converted once to ``dtype`` (None: a floating tensor keeps its dtype,
    anything else becomes torch's default float dtype). Refused: TypeError for anything but real
    numbers (None, strings, dicts, bools, complex), ValueError for another count or shape (a 2-D
    array, nested lists) and for NaN or inf.
    """
    allowed = f"one number per response ({n}): a list, tuple, NumPy array or tensor of {n} real numbers"
    if not torch.is_tensor(value):
        try:
            if isinstance(value, (str, bytes, dict)):
                raise TypeError
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must return {allowed}; got {type(value).__name__} {reprlib.repr(value)}") from None
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must return {allowed}; got {value.dtype} values (convert with float())")
    if value.ndim == 0 and n == 1:
        value = value.reshape(1)
    if value.ndim != 1 or len(value) != n:
        got = "one number" if value.ndim == 0 else (f"{len(value)} values" if value.ndim == 1 else
                                                      f"an array of shape {tuple(value.shape)}")
        raise ValueError(f"{name} must return {allowed}; got {got}")
    if not bool(torch.isfinite(value).all()):
        bad = torch.nonzero(~torch.isfinite(value)).flatten().tolist()
        raise ValueError(f"{name} must return finite numbers; got NaN or inf for responses {bad[:8]}")
    if dtype is None:
        dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
    out = value.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(out).all()):  # finite before the cast: too large for dtype
        bad = torch.nonzero(~torch.isfinite(out)).flatten().tolist()
        kind = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} must return numbers that fit {kind} (at most {torch.finfo(dtype).max:.4g} in "
                         f"size); got values too large for {kind} for responses {bad[:8]}")
    return out


class PrepareInterrupted(TrainingInterrupted):
    """``prepare`` interrupted: a ``TrainingInterrupted`` whose ``result`` is a partial ``Prepared``
    (the parts made so far, None for the rest) and ``phase`` the step it stopped in."""

    def __init__(self, result: Prepared, phase: str, cause: BaseException):
        missing = [f.name for f in fields(Prepared) if getattr(result, f.name) is None]
        KeyboardInterrupt.__init__(self, f"prepare stopped in {phase} ({type(cause).__name__}); the parts made so far "
                                         f"are in .result, a Prepared with None for {', '.join(missing) or 'nothing'}")
        self.result, self.phase = result, phase


# The random streams of ``prepare``, one per use, each seeded with seed + its offset.
SEED_STREAMS = {"init": 0, "sft_corpus": 0, "sft": 0, "reward_model": 0, "train_pairs": 1, "test_pairs": 2,
                "eval_prompts": 3, "heldout_corpus": 7}


def seed_streams(seed: int = 0) -> dict[str, int]:
    """The seed of each random stream of ``prepare(seed)``: ``seed + SEED_STREAMS[name]``, by name.

    Calling the steps of ``prepare`` one by one with these seeds gives the same objects.
    """
    seed, top = check_seed("seed", seed), max(SEED_STREAMS.values())
    if seed + top >= 2**63:
        raise ValueError(f"seed must be below 2**63 - {top} (prepare adds up to {top} to it), got {seed}")
    return {name: seed + offset for name, offset in SEED_STREAMS.items()}


def preference_data(task, model, tokenizer, split: str, n: int, *, seed: int) -> Preferences:
    """Phase 2's data D: ``n`` prompts x of ``split`` drawn with ``seed``, two responses y1, y2 ~ pi(.|x)
    sampled from ``model`` (``sample_pairs``), and the Bradley-Terry labeller on r* (eq. rlhf-bt,
    ``label_preferences``), both with the same ``seed``."""
    n = check_positive_int("n", n)
    prompts = task.prompts(n, seed, split)
    y1, y2 = sample_pairs(model, tokenizer, prompts, seed=seed, max_new_tokens=task.max_response_tokens)
    return label_preferences(task, prompts, y1, y2, seed=seed)


def prepare(seed: int = 0, *, n_sft: int = 4000, sft_steps: int = 200, n_pairs: int = 1500,
            n_test_pairs: int = 500, rm_steps: int = 200, n_eval_prompts: int = 256, model=None,
            tokenizer=None, device=None) -> Prepared:
    """Phases 1 and 2, seeded: build the task and tokenizer, SFT a tiny GPT-2 on the corpus, sample pairs
    from pi^SFT, label them by Bradley-Terry on r*, and fit the reward model r_phi on the train pairs.

    ``model`` / ``tokenizer`` (e.g. from ``lm.load_causal_lm``) replace the tiny GPT-2 and the
    word-level tokenizer: the scale-up path. Train pairs use the train prompts, test pairs and
    ``eval_prompts`` the held-out (template, item) combinations. Each random use has its own seed
    (``seed_streams``); chapter 4 runs the same steps one by one and gets the same objects.

    Refused: sizes that are not integers >= 1, a ``model`` without a ``tokenizer`` or the other way
    round, a ``model`` that is not a ``torch.nn.Module``. An interrupt (Ctrl-C) at any point raises
    ``PrepareInterrupted`` (a ``TrainingInterrupted``) whose ``result`` is a partial ``Prepared``:
    the parts made so far and None for the rest. ``sft`` is then the model as far as SFT got
    (``sft_history`` says how far; None if SFT had not started), ``reward_model`` likewise with
    ``rm_history`` (not yet normalised to mean zero if its training was cut short).
    """
    for name, value in (("n_sft", n_sft), ("sft_steps", sft_steps), ("n_pairs", n_pairs),
                        ("n_test_pairs", n_test_pairs), ("rm_steps", rm_steps), ("n_eval_prompts", n_eval_prompts)):
        check_positive_int(name, value)
    s = seed_streams(seed)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a causal LM, e.g. from lm.load_causal_lm), "
                        f"got {type(model).__name__}")
    parts = {f.name: None for f in fields(Prepared)} | {"sft_heldout": {}}
    phase = "the task and tokenizer"
    try:
        task = parts["task"] = lm.SentimentTask()
        if tokenizer is None:
            tokenizer = lm.build_tokenizer(task)
            model = lm.tiny_gpt2(tokenizer, seed=s["init"])
        parts["tokenizer"] = tokenizer
        model = parts["sft"] = model.to(get_device(device))
        phase = "SFT"
        xs, ys = task.sft_corpus(n_sft, s["sft_corpus"])
        hx, hy = task.sft_corpus(500, s["heldout_corpus"], split="test")
        parts["sft_heldout"] = {"untrained": heldout_loss(model, tokenizer, hx, hy)}
        parts["sft_history"] = train_sft(model, tokenizer, xs, ys, steps=sft_steps, seed=s["sft"]).history
        parts["sft_heldout"]["sft"] = heldout_loss(model, tokenizer, hx, hy)
        model.requires_grad_(False)
        phase = "the preference data"
        parts["train_prefs"] = preference_data(task, model, tokenizer, "train", n_pairs, seed=s["train_pairs"])
        parts["test_prefs"] = preference_data(task, model, tokenizer, "test", n_test_pairs, seed=s["test_pairs"])
        phase = "the reward model"
        rm = train_reward_model(model, tokenizer, parts["train_prefs"], steps=rm_steps, seed=s["reward_model"])
        parts["reward_model"], parts["rm_history"] = rm.model, rm.history
        parts["eval_prompts"] = task.prompts(n_eval_prompts, s["eval_prompts"], "test")
    except KeyboardInterrupt as stop:
        if isinstance(stop, TrainingInterrupted) and isinstance(stop.result, TrainResult):  # SFT or the reward model
            model_key, history_key = ("sft", "sft_history") if phase == "SFT" else ("reward_model", "rm_history")
            parts[model_key], parts[history_key] = stop.result.model, stop.result.history
        raise PrepareInterrupted(Prepared(**parts), phase, stop) from stop
    return Prepared(**parts)


def _lm(policy):
    if not isinstance(policy, nn.Module):
        raise TypeError("policy must be a causal LM or a PolicyWithValue (a torch.nn.Module), "
                        f"got {type(policy).__name__}")
    return policy.lm if isinstance(policy, PolicyWithValue) else policy


@torch.no_grad()
def kl_to_ref(policy, ref, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """KL(pi || pi_ref) per sequence, [B]: sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) over the response's states.

    For responses sampled from pi its mean is an unbiased, never-negative estimate of the
    sequence-level KL (each token's KL is exact over the vocabulary).
    """
    logits = lm.response_logits(_lm(policy), prompt_ids, prompt_mask, response_ids, response_mask)
    logits_ref = lm.response_logits(ref, prompt_ids, prompt_mask, response_ids, response_mask)
    return sequence_kl(logits, logits_ref, response_mask)


@torch.no_grad()
def evaluate(policy, prepared: Prepared, prompts: list[str] | None = None, *, n_repeats: int = 1,
             seed: int = 12345) -> dict:
    """Sample from ``policy`` on held-out prompts (``prepared.eval_prompts`` by default, each ``n_repeats``
    times) and measure: ``r_star`` (mean r*), ``r_phi`` (mean reward-model score), ``kl``
    (``kl/exact_per_sequence``: mean KL(pi || pi_ref), see ``kl_to_ref``), each with its standard
    error over the ``n`` samples under ``<key>/se`` (s / sqrt(n)); ``distinct_1``, ``distinct_2``
    and ``samples``. Means are taken in float64, so they do not depend on the order of summation.
    Refused: a ``policy`` that is not a module, ``prepared`` that is not a complete ``Prepared``
    (TypeError), a negative ``seed``, and a reward model whose scores are not one finite number
    per sample (``check_rewards``). The policy runs in eval mode (no dropout) and is handed back
    in the mode it came in (``sft.kept_as_found``)."""
    model = _lm(policy)
    device = next(model.parameters()).device
    prepared = check_prepared("prepared", prepared)
    prompts = lm.check_texts("prompts", prepared.eval_prompts if prompts is None else prompts)
    prompts = prompts * check_positive_int("n_repeats", n_repeats)
    gen = torch.Generator(device=device).manual_seed(check_seed("seed", seed))
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    with kept_as_found(model):
        model.eval()
        ids, mask = lm.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
        text = lm.decode_responses(prepared.tokenizer, ids, mask)
        measured = {"r_star": prepared.task.true_rewards(prompts, text),
                    "r_phi": check_rewards("prepared.reward_model", prepared.reward_model(p, pm, ids, mask),
                                           len(prompts)),
                    "kl/exact_per_sequence": kl_to_ref(model, prepared.sft, p, pm, ids, mask)}
    out = {}
    for key, values in measured.items():  # the mean over the samples, and its standard error s / sqrt(n)
        values = values.double()
        out[key] = values.mean().item()
        out[key + "/se"] = (values.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
    return {**out, "n": len(prompts), "distinct_1": lm.distinct_n(text, 1), "distinct_2": lm.distinct_n(text, 2),
            "samples": text}


@torch.no_grad()
def compare_kl_estimators(policy, prepared: Prepared, *, n_prompts: int = 64, n_draws: int = 64,
                          seed: int = 0) -> dict:
    """Bias and spread of the per-token estimators k1, k2, k3 (eq. rlhf-kl-est) of KL(pi(.|s) || pi_ref(.|s)).

    States s are the prefixes of responses sampled from ``policy`` on held-out prompts; at each,
    ``n_draws`` tokens y ~ pi(.|s) are drawn and each estimator is compared with the exact KL
    over the vocabulary. Returns ``exact`` (mean exact KL per state) and, per estimator,
    ``mean``, ``bias`` (mean - exact), ``std`` (of one draw) and ``negative`` (fraction < 0).
    Refused: ``n_prompts`` above ``len(prepared.eval_prompts)`` (it would silently use fewer), a
    negative ``seed``, ``prepared`` that is not a complete ``Prepared``.
    """
    model = _lm(policy)
    device = next(model.parameters()).device
    available = len(check_prepared("prepared", prepared).eval_prompts)
    n_prompts = check_positive_int("n_prompts", n_prompts)
    if n_prompts > available:
        raise ValueError(f"n_prompts must be <= len(prepared.eval_prompts) ({available}), got {n_prompts}")
    gen = torch.Generator(device=device).manual_seed(check_seed("seed", seed))
    prompts = prepared.eval_prompts[:n_prompts]
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    ids, mask = lm.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
    m = mask.bool()
    logp = F.log_softmax(lm.response_logits(model, p, pm, ids, mask), -1)[m]  # [S, V] over the states
    logq = F.log_softmax(lm.response_logits(prepared.sft, p, pm, ids, mask), -1)[m]
    exact = exact_kl(logp, logq)
    draws = torch.multinomial(logp.exp(), check_positive_int("n_draws", n_draws), replacement=True, generator=gen)
    ks = kl_estimators(logp.gather(1, draws), logq.gather(1, draws))
    out = {"exact": exact.mean().item(), "n_states": int(m.sum())}
    for name, k in ks.items():
        out[name] = {"mean": k.mean().item(), "bias": (k.mean(1) - exact).mean().item(),
                     "std": k.std().item(), "negative": (k < 0).float().mean().item()}
    return out


@dataclass(frozen=True, kw_only=True)
class RLHFConfig(Config):
    """Phase 3, PPO over tokens: ``steps`` collect-then-update iterations, each sampling one response
    for each of ``batch_size`` train prompts and taking ``epochs`` passes of minibatches of
    ``minibatch_size`` responses (None: the whole batch) of Adam (``lr``) on -L^CLIP (clip range
    ``eps``) + ``vf_coef`` L^VF, gradients clipped to ``max_grad_norm``; GAE(``gamma``, ``lam``) over
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
    max_grad_norm: float = 1.0
    kl_target: float | None = None
    kl_horizon: int = 2000
    missing_eos_penalty: float = 2.0
    progress: bool = False

    def __post_init__(self):
        self.check("beta", check_in_range, 0.0, math.inf)
        for name in ("steps", "batch_size", "epochs", "minibatch_size", "kl_horizon"):
            self.check(name, check_positive_int)
        self.check("seed", check_seed)
        for name in ("lr", "eps", "max_grad_norm", "kl_target"):
            self.check(name, check_positive)
        self.check("gamma", check_in_range, 0.0, 1.0)
        self.check("lam", check_in_range, 0.0, 1.0)
        self.check("vf_coef", check_in_range, 0.0, math.inf)
        self.check("missing_eos_penalty", check_in_range, 0.0, math.inf)
        self.check("progress", check_bool)
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


def _reuses_first_pass(policy: nn.Module, cfg: RLHFConfig) -> bool:
    """Whether ``collect``'s forward pass can serve as the first minibatch's: one minibatch holds the
    whole batch (so epoch 0's forward sees the very parameters ``collect`` saw) and no dropout is
    active (so the pass in train mode equals the one in eval mode)."""
    one_minibatch = cfg.minibatch_size is None or cfg.minibatch_size >= cfg.batch_size
    return one_minibatch and not lm.active_dropout(policy)


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
    ids, mask = lm.sample(policy.lm, tok, p, pm, prepared.task.max_response_tokens, generator=generator)
    reuse = _reuses_first_pass(policy, cfg)
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
             "distinct_1": lm.distinct_n(text, 1), "distinct_2": lm.distinct_n(text, 2),
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
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
    return v_loss.item()


def train_ppo(prepared: Prepared, config: RLHFConfig | None = None, **kwargs) -> TrainResult:
    """Phase 3: PPO over tokens on max_pi E[r_phi(x, y)] - beta KL(pi || pi_ref) (eq. rlhf-objective).

    Arguments: those of ``RLHFConfig``, or a ``config``. Each step ``collect``s one response per
    prompt for ``batch_size`` train prompts (the KL penalty per token, r_phi at the last token, GAE
    over the response) and ``update``s the policy. A response that never emits EOS within
    ``task.max_response_tokens`` is cut off, and its score is r_phi - ``missing_eos_penalty`` (as
    TRL does): r_phi never saw unfinished text and would otherwise be gamed through it.

    Returns a ``TrainResult``: ``model`` is the fine-tuned causal LM, ``value_fn`` the
    ``PolicyWithValue`` (the LM and its value head). Logs per step: ``r_phi``, ``r_star``,
    ``kl/exact_per_sequence`` (see ``kl_to_ref``), ``kl/k1_per_sequence`` (the summed log-ratio),
    ``entropy`` (per token), ``distinct_1``, ``distinct_2``, ``beta``, ``completions/clipped_ratio``
    (the fraction cut off without EOS), ``loss/value`` and ``seconds``.

    Refused: ``prepared`` that is not a complete ``Prepared`` (TypeError), a reward model whose
    scores are not one finite number per response (``check_rewards``). An interrupt at any point
    after the checks raises ``TrainingInterrupted`` whose ``result`` is the ``TrainResult`` so far
    (``model`` and ``value_fn`` None if it came before they were made); each update and its log
    entry are applied whole.
    """
    cfg = make_config(RLHFConfig, config, **kwargs)
    device = check_prepared("prepared", prepared).device
    history = History()
    result = TrainResult(None, history, cfg)  # until the policy exists
    with run_guard(lambda: result, lambda: result.value_fn is None or result.value_fn.eval()), rng_scope(cfg.seed):
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
                    prompts = prepared.task.prompts(cfg.batch_size, cfg.seed * 100_003 + step)
                    batch = collect(policy, prepared, prompts, ctl.beta, cfg, sample_gen)
                    v_loss = update(policy, opt, batch, cfg, shuffle_gen)
                    beta_used = ctl.beta
                    ctl.update(batch.stats["kl/exact_per_sequence"], cfg.batch_size)
                history.log({**batch.stats, "beta": beta_used, "loss/value": v_loss, "seconds": timer.seconds})
    return result
