"""Chapter 7: GRPO's length bias, measured in the update (Liu et al. 2025, "Understanding R1-Zero-like
training", Dr. GRPO).

GRPO's ``loss_type="grpo"`` averages each response's token losses over its own ``|y_i|`` tokens
(eq. grpo-loss), so a token of response i is pushed with weight A_i / len(y_i): among wrong answers
(A_i < 0) the longer ones are pushed down least, among right answers (A_i > 0) the shorter ones
are pushed up most. ``"dr_grpo"`` and ``"dapo"`` weigh every token alike (on one batch their
gradients differ by a positive factor only, so they point the same way). To see it, the verdict
must leave the length free and come early:

    r(x, y) = 1[y_1 in POSITIVE]                                           (eq. first-word-reward)

(``first_word_reward``). Training runs of 30 updates drown the bias in the seeds' spread, so
``length_derivatives`` measures it where it lives, in one update: on one batch, the derivative of
the expected length of the right and of the wrong answers along each loss type's step,

    d/d eta E[len(y) given pass] at theta + eta u,  u = -grad L / norm(grad L),
    grad E[len(y) given pass] = E[(len(y) - E[len(y) given pass]) grad log pi(y) given pass]              (eq. length-derivative)

the second line the score-function identity (chapter 1), averaged over a fresh evaluation sample.
"""

from __future__ import annotations

import torch

from .grpo import LOSS_TYPES, group_advantages, grpo_loss
from .groups import check_inputs, sample_groups
from .sentiment import POSITIVE, check_texts
from .trainer import trainable_copy, training_scope
from .utils import check_choice, check_positive_int, check_seed

__all__ = ["first_word_reward", "length_derivatives"]


def first_word_reward(prompts, responses) -> torch.Tensor:
    """r(x, y) = 1[y_1 in POSITIVE] (eq. first-word-reward): a verifier that passes a response whose
    first word is positive (``sentiment.POSITIVE``), whatever follows and however long it is; a float
    tensor [N] of 0s and 1s (an empty response fails). A ``reward_fn`` for ``grpo.train``, importable
    by worker processes. ``prompts`` and ``responses``: lists of strings of one length."""
    prompts, responses = check_texts("prompts", prompts), check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length, got {len(prompts)} and {len(responses)}")
    return torch.tensor([float(y.split()[:1] != [] and y.split()[0] in POSITIVE) for y in responses])


def _flat_grad(model, value):
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _score_grad(model, g, weights, lengths):
    """grad of E_w[len(y)] by the score function: sum_j w_j (len(y_j) - mean_w len(y)) grad log pi(y_j) / sum_j w_j."""
    w = weights / weights.sum()
    centred = lengths - (w * lengths).sum()
    return _flat_grad(model, (w * centred * g.token_logprobs(model).sum(1)).sum())


def length_derivatives(prepared, seed: int = 0, *, batch_size: int = 64, num_generations: int = 8,
                       eval_prompts: int = 256, loss_types=LOSS_TYPES) -> dict:
    """{loss_type: {"pass": d, "fail": d, "all": d}}: the derivative (eq. length-derivative), in tokens
    per unit step, of the expected length of the responses that pass, that fail, and of all, along
    each loss type's unit step from pi_ref on one batch, with ``first_word_reward``.

    The batch: ``batch_size`` train prompts x ``num_generations`` samples of ``prepared.sft``,
    advantages of eq. grpo-adv (std-scaled), ``grpo_loss`` with beta = 0 (at pi_ref the ratio is 1).
    The evaluation: ``eval_prompts`` other prompts x ``num_generations`` samples; every loss type is
    scored on the same batch and the same evaluation sample, so their differences are paired. Seeded
    by ``seed``; ``prepared`` is left as found. Refused: what ``grpo.train`` refuses of ``prepared``,
    sizes that are not integers >= 1 (``num_generations`` >= 2), an unknown loss type, and a batch or
    evaluation sample in which every response passes or every one fails (ValueError).
    """
    ref = check_inputs(prepared, None)[2]
    seed = check_seed("seed", seed)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_prompts = check_positive_int("eval_prompts", eval_prompts)
    G = check_positive_int("num_generations", num_generations, 2)
    loss_types = [check_choice("loss_types", lt, LOSS_TYPES) for lt in loss_types]
    task, T = prepared.task, prepared.task.max_response_tokens
    with training_scope(seed):
        policy = trainable_copy(ref)
        gen = torch.Generator(device=prepared.device).manual_seed(seed)
        g = sample_groups(policy, ref, prepared.tokenizer, task.prompts(batch_size, 2 * seed), G, T, gen)
        e = sample_groups(policy, ref, prepared.tokenizer, task.prompts(eval_prompts, 2 * seed + 1), G, T, gen)
        r, passed = first_word_reward(g.prompts, g.text), first_word_reward(e.prompts, e.text)
        for name, x in (("batch", r), ("evaluation sample", passed)):
            if x.min() == x.max():
                raise ValueError(f"every response of the {name} {'passes' if x[0] else 'fails'}: no derivative; "
                                 "draw more samples (batch_size, eval_prompts) or another seed")
        adv = group_advantages(r.view(-1, G)).view(-1).to(g.logp)
        lengths = e.mask.sum(1).to(g.logp)
        h = {k: _score_grad(policy, e, w.to(g.logp), lengths)
             for k, w in (("pass", passed), ("fail", 1 - passed), ("all", torch.ones_like(passed)))}
        out = {}
        for lt in loss_types:
            loss = grpo_loss(g.token_logprobs(policy), g.logp, g.ref_logp, adv, g.mask, 0.0, loss_type=lt, max_length=T)
            u = -_flat_grad(policy, loss.loss)
            u = u / u.norm()
            out[lt] = {k: float(v @ u) for k, v in h.items()}
    return out
