"""Chapters 4 to 6: measurements of a language-model policy against pi_ref on held-out prompts.

- ``evaluate(policy, prepared)``: r*, r_phi and KL(pi || pi_ref) of samples on ``prepared.eval_prompts``,
  each with its standard error; every LM chapter (and ``rlnotes.frontier``) measures a policy with it.
- ``kl_to_ref``: the sequence-level KL that ``evaluate`` reports, exact over the vocabulary per token.
- ``compare_kl_estimators``: bias and spread of the estimators k1, k2, k3 against that exact KL (chapter 4).

A policy is a causal LM or an ``rlhf.PolicyWithValue`` (the LM with its value head).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import lm, sampling, sentiment
from .kl import exact_kl, kl_estimators, sequence_kl
from .prepare import Prepared, check_prepared
from .reward import check_rewards
from .rlhf import PolicyWithValue
from .trainer import kept_as_found
from .utils import check_positive_int, check_seed

# The most samples one ``evaluate`` draws (``len(prompts) * n_repeats``; the book's largest is 256 x 2):
# a call at the limit takes seconds on a CPU, far larger ones hours or all the memory.
MAX_EVAL_SAMPLES = 8192
# The most tokens ``compare_kl_estimators`` draws per state (``n_draws``; the book's is 64): the draws
# of all states are held at once, a few hundred MB at the limit.
MAX_KL_DRAWS = 4096


def check_causal_lm(name: str, model) -> nn.Module:
    """Return ``model`` if it is a causal LM: a ``torch.nn.Module`` whose forward takes ``input_ids`` (as a
    transformers model's; a forward Python cannot read is taken as it is). ``TypeError`` naming ``name``
    for anything else, a reward model included."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a causal LM (a torch.nn.Module), got {type(model).__name__}")
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return model
    if not any(p.name == "input_ids" or p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        raise TypeError(f"{name} must be a causal LM (its forward takes input_ids, as a transformers model's), "
                        f"got a {type(model).__name__} whose forward takes {signature}")
    return model


def _lm(policy, name: str = "policy"):
    """The causal LM of ``policy``: a causal LM, or a ``PolicyWithValue``'s ``.lm``."""
    if isinstance(policy, PolicyWithValue):
        return policy.lm
    if not isinstance(policy, nn.Module):
        raise TypeError(f"{name} must be a causal LM or a PolicyWithValue (a torch.nn.Module), "
                        f"got {type(policy).__name__}")
    return check_causal_lm(name, policy)


@torch.no_grad()
def kl_to_ref(policy, ref, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """KL(pi || pi_ref) per sequence, [B]: sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) over the response's states.

    For responses sampled from pi its mean is an unbiased, never-negative estimate of the
    sequence-level KL (each token's KL is exact over the vocabulary). ``policy`` and ``ref`` must be
    causal LMs (a ``PolicyWithValue`` for ``policy`` too): TypeError naming the argument.
    """
    model, ref = _lm(policy), _lm(ref, "ref")
    logits = lm.response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
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
    Refused: a ``policy`` that is not a causal LM, ``prepared`` that is not a complete ``Prepared``
    (TypeError), a negative ``seed``, more than ``MAX_EVAL_SAMPLES`` samples, and a reward model
    whose scores are not one finite number per sample (``check_rewards``). The policy runs in eval
    mode (no dropout) and is handed back in the mode it came in (``trainer.kept_as_found``)."""
    model = _lm(policy)
    device = next(model.parameters()).device
    prepared = check_prepared("prepared", prepared)
    prompts = sentiment.check_texts("prompts", prepared.eval_prompts if prompts is None else prompts)
    n_repeats = check_positive_int("n_repeats", n_repeats)
    if len(prompts) * n_repeats > MAX_EVAL_SAMPLES:
        raise ValueError(f"len(prompts) * n_repeats (the samples drawn) must be <= MAX_EVAL_SAMPLES "
                         f"({MAX_EVAL_SAMPLES}), got {len(prompts)} x n_repeats={n_repeats}")
    prompts = prompts * n_repeats
    gen = torch.Generator(device=device).manual_seed(check_seed("seed", seed))
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    with kept_as_found(model):
        model.eval()
        ids, mask = sampling.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
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
    return {**out, "n": len(prompts), "distinct_1": sentiment.distinct_n(text, 1), "distinct_2": sentiment.distinct_n(text, 2),
            "samples": text}


@torch.no_grad()
def compare_kl_estimators(policy, prepared: Prepared, *, n_prompts: int = 64, n_draws: int = 64,
                          seed: int = 0) -> dict:
    """Bias and spread of the per-token estimators k1, k2, k3 (eq. rlhf-kl-est) of KL(pi(.|s) || pi_ref(.|s)).

    States s are the prefixes of responses sampled from ``policy`` on held-out prompts; at each,
    ``n_draws`` tokens y ~ pi(.|s) are drawn and each estimator is compared with the exact KL
    over the vocabulary. Returns ``exact`` (mean exact KL per state) and, per estimator,
    ``mean``, ``bias`` (mean - exact), ``std`` (of one draw) and ``negative`` (fraction < 0).
    Refused: ``n_prompts`` above ``len(prepared.eval_prompts)`` (it would silently use fewer),
    ``n_draws`` above ``MAX_KL_DRAWS``, a
    negative ``seed``, ``prepared`` that is not a complete ``Prepared``.
    """
    model = _lm(policy)
    device = next(model.parameters()).device
    available = len(check_prepared("prepared", prepared).eval_prompts)
    n_prompts, n_draws = check_positive_int("n_prompts", n_prompts), check_positive_int("n_draws", n_draws)
    if n_draws > MAX_KL_DRAWS:
        raise ValueError(f"n_draws must be <= MAX_KL_DRAWS ({MAX_KL_DRAWS}) tokens per state, got {n_draws}")
    if n_prompts > available:
        raise ValueError(f"n_prompts must be <= len(prepared.eval_prompts) ({available}), got {n_prompts}")
    gen = torch.Generator(device=device).manual_seed(check_seed("seed", seed))
    prompts = prepared.eval_prompts[:n_prompts]
    p, pm = lm.encode_prompts(prepared.tokenizer, prompts, device)
    ids, mask = sampling.sample(model, prepared.tokenizer, p, pm, prepared.task.max_response_tokens, generator=gen)
    m = mask.bool()
    logp = F.log_softmax(lm.response_logits(model, p, pm, ids, mask), -1)[m]  # [S, V] over the states
    logq = F.log_softmax(lm.response_logits(prepared.sft, p, pm, ids, mask), -1)[m]
    exact = exact_kl(logp, logq)
    draws = torch.multinomial(logp.exp(), n_draws, replacement=True, generator=gen)
    ks = kl_estimators(logp.gather(1, draws), logq.gather(1, draws))
    out = {"exact": exact.mean().item(), "n_states": int(m.sum())}
    for name, k in ks.items():
        out[name] = {"mean": k.mean().item(), "bias": (k.mean(1) - exact).mean().item(),
                     "std": k.std().item(), "negative": (k < 0).float().mean().item()}
    return out
