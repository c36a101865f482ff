"""Chapter 6: groups of samples, the machinery RLOO (``rlnotes.rloo``) and GRPO (``rlnotes.grpo``) share.

Each step of a group trainer draws the prompts of step ``step_seed(seed, step)``, samples k
responses y_1..y_k ~ pi(.|x) per prompt and scores them under pi and pi_ref in one pass each
(``sample_groups`` -> ``Groups``), gets one reward per response (``score_groups``), turns the
[B, k] rewards into advantages (``check_groups`` accepts them; ``relative_advantages`` is the
centring both trainers' baselines build on) and logs ``group_metrics``.

``reuses_scoring_pass`` is the one rule for when the policy's scoring pass, made while sampling,
can serve the update's forward pass (the group trainers and chapter 4's ``rlhf.collect``).
"""

from __future__ import annotations

import inspect
import reprlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import lm, models, sampling
from .kl import sequence_kl
from .prepare import check_prepared
from .reward import check_rewards
from .trainer import check_model
from .utils import check_finite, check_positive_int, check_seed

# The most responses one step of a group trainer samples (``batch_size * num_generations``; in the book
# at most 16 x 8) or ``rloo.gradient_variance`` draws at once: a step at the limit takes seconds on a CPU,
# where far larger groups would run for hours or exhaust memory.
MAX_GROUP_SAMPLES = 4096


def check_group_size(n_prompts: int, k: int, prompts_name: str = "batch_size", k_name: str = "num_generations") -> None:
    """``ValueError`` naming both arguments unless ``n_prompts * k`` <= ``MAX_GROUP_SAMPLES``."""
    if n_prompts * k > MAX_GROUP_SAMPLES:
        raise ValueError(f"{prompts_name} * {k_name} (the responses sampled at once) must be <= MAX_GROUP_SAMPLES "
                         f"({MAX_GROUP_SAMPLES}), got {prompts_name}={n_prompts} x {k_name}={k} = {n_prompts * k}")


def step_seed(seed: int, step: int) -> int:
    """The seed of the prompts of update ``step`` of a run seeded ``seed``: ``seed * 100_003 + step``
    (the online trainers ``rlhf.train``, ``rloo.train``, ``grpo.train``; may pass 2**63). ``seed`` and
    ``step`` must be whole numbers >= 0 (``utils.check_seed``, ``utils.check_positive_int``)."""
    check_seed("seed", seed)
    check_positive_int("step", step, 0)
    return seed * 100_003 + step


def check_groups(name: str, rewards) -> torch.Tensor:
    """Return ``rewards`` as a float tensor [B, k], k >= 2 samples per prompt (a list or array of
    numbers is converted to float32, integers to torch's default float dtype).

    Refused: TypeError for what is not real numbers (strings, bools, complex); ValueError for
    another shape and for NaN or inf.
    """
    if not torch.is_tensor(rewards):
        try:
            rewards = torch.as_tensor(rewards, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a [B, k] tensor or nested list of numbers, got "
                            f"{type(rewards).__name__} {reprlib.repr(rewards)}") from None
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {rewards.dtype} (convert with .float())")
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"{name} must be [B, k] with k >= 2 samples per prompt, got shape {tuple(rewards.shape)}")
    check_finite(name, rewards)
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def relative_advantages(rewards: torch.Tensor, scale: bool, eps: float) -> torch.Tensor:
    """A_i = (r_i - mean_j r_j) / (std_j r_j + eps) per group (eq. grpo-adv), [B, G] -> [B, G]; without
    ``scale`` only the centring r_i - mean_j r_j. A group of equal rewards gets exactly 0.

    The formula of ``rlnotes.grpo.group_advantages``, which checks its arguments and calls this one;
    ``rlnotes.rloo.exact_estimator_moments`` calls it on rewards it has checked (``check_groups``'s
    [B, k] floats, ``scale`` a bool, ``eps`` > 0), with no checks here.
    """
    centred = rewards - rewards.mean(1, keepdim=True)
    equal = (rewards == rewards[:, :1]).all(1, keepdim=True)
    if scale:
        centred = centred / (rewards.std(1, keepdim=True) + eps)
    return torch.where(equal, torch.zeros_like(centred), centred)


# ------------------------------------------------------------------------- groups of samples

@dataclass
class Groups:
    """k responses for each of B prompts, in prompt-major order (x_1 k times, then x_2, ...).

    ``logp`` / ``ref_logp``: log pi_old(y_t|s_t) and log pi_ref(y_t|s_t) per token, [B k, T], 0 on
    padding; ``kl``: the exact per-token KL(pi_old || pi_ref) summed over each response, [B k]
    (``rlnotes.kl.sequence_kl``, as ``rlnotes.measure.kl_to_ref``); ``entropy``: mean entropy per response token of pi_old;
    ``first_pass``: ``logp`` with its autograd graph when ``sample_groups`` was asked to keep it (the
    forward pass of the one update), else None.
    """

    prompts: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    text: list
    logp: torch.Tensor
    ref_logp: torch.Tensor
    kl: torch.Tensor
    entropy: float
    finished: torch.Tensor
    k: int
    first_pass: torch.Tensor | None = None

    def tensors(self, idx):
        """(prompt_ids, prompt_mask, response_ids, response_mask) of the samples at ``idx``."""
        return self.prompt_ids[idx], self.prompt_mask[idx], self.ids[idx], self.mask[idx]

    def token_logprobs(self, model, idx=None) -> torch.Tensor:
        """log pi(y_t|s_t) of the samples at ``idx``, [n, T] (0 on padding); ``idx`` None: all of them,
        each prompt run once for its k responses (``lm.group_response_logits``)."""
        if idx is not None:
            return lm.token_logprobs(model, *self.tensors(idx))
        p, pm = self.prompt_ids[::self.k], self.prompt_mask[::self.k]
        return lm.logprobs_from_logits(lm.group_response_logits(model, p, pm, self.ids, self.mask), self.ids, self.mask)


@torch.no_grad()
def sample_groups(policy, ref, tokenizer, prompts: list[str], k: int, max_new_tokens: int,
                  generator: torch.Generator | None = None, keep_graph: bool = False) -> Groups:
    """Draw k responses per prompt from ``policy`` and score them under it and under ``ref`` (one
    pass of each, every prompt run once for its k responses). With ``keep_graph`` the policy's
    scoring pass keeps its autograd graph (``Groups.first_pass``), so that an update whose one
    gradient step sees these very parameters back-propagates through it instead of running the
    same forward pass again (``reuses_scoring_pass``). ``k`` must be a whole number >= 1, and
    ``len(prompts) * k`` at most ``MAX_GROUP_SAMPLES``."""
    k = check_positive_int("k", k)
    check_group_size(len(prompts), k, "len(prompts)", "k")
    device = next(policy.parameters()).device
    repeated = [x for x in prompts for _ in range(k)]
    p, pm = lm.encode_prompts(tokenizer, prompts, device)
    was_training = policy.training
    policy.eval()
    ids, mask = sampling.sample(policy, tokenizer, p, pm, max_new_tokens, generator=generator, k=k)
    with torch.set_grad_enabled(keep_graph):
        logits = lm.group_response_logits(policy, p, pm, ids, mask)
        logp = lm.logprobs_from_logits(logits, ids, mask)
    policy.train(was_training)
    first_pass = logp if keep_graph else None
    logits, logp = logits.detach(), logp.detach()
    logits_ref = lm.group_response_logits(ref, p, pm, ids, mask)
    logq = F.log_softmax(logits, -1)
    entropy = (-(logq.exp() * logq).sum(-1) * mask).sum() / mask.sum()
    finished = ((ids == tokenizer.eos_token_id) & mask.bool()).any(1)
    return Groups(repeated, p.repeat_interleave(k, 0), pm.repeat_interleave(k, 0), ids, mask,
                  lm.decode_responses(tokenizer, ids, mask), logp,
                  lm.logprobs_from_logits(logits_ref, ids, mask), sequence_kl(logits, logits_ref, mask),
                  entropy.item(), finished, k, first_pass)


def reuses_scoring_pass(policy: nn.Module, epochs: int = 1, one_minibatch: bool = True) -> bool:
    """Whether the policy's scoring pass, made while sampling, can serve the update's forward pass: the
    update's minibatch is the whole batch (``one_minibatch``) and sees the parameters that scored the
    samples (``epochs`` == 1 where the pass serves every epoch, as in ``rloo.train`` and ``grpo.train``;
    ``rlhf.collect`` uses it for epoch 0 only and asks with the default 1), and no dropout is active
    (``models.active_dropout``), so the pass in eval mode equals the one in train mode. What TRL's
    GRPOTrainer does with ``num_iterations=1``; it saves one policy forward pass per step."""
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module (the policy being trained), got {type(policy).__name__}")
    check_positive_int("epochs", epochs)
    return epochs == 1 and one_minibatch and not models.active_dropout(policy)


def check_inputs(prepared, reward_fn) -> tuple:
    """What RLOO and GRPO check on entry: ``prepared`` a complete ``Prepared`` (``check_prepared``) whose
    ``sft`` may be trained (the policy starts as its trainable copy, so float16 is refused:
    ``trainer.check_model``), and ``reward_fn`` (``check_reward_fn``). Returns ``(task, tokenizer, ref,
    reward_fn)``."""
    ref = check_prepared("prepared", prepared).sft
    check_model("prepared.sft", ref, trained=True)
    return prepared.task, prepared.tokenizer, ref, check_reward_fn(reward_fn)


def check_reward_fn(reward_fn):
    """Return ``reward_fn`` if it is None or a callable that takes (prompts, responses), else raise
    ``TypeError`` (a callable whose signature Python cannot read is accepted as it is)."""
    allowed = "a function (prompts, responses) -> one number per response, or None (the verifiable r*)"
    if reward_fn is not None and not callable(reward_fn):
        raise TypeError(f"reward_fn must be {allowed}, got {type(reward_fn).__name__} {reprlib.repr(reward_fn)}")
    try:
        signature = inspect.signature(reward_fn) if reward_fn is not None else None
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to read
        signature = None
    if signature is not None:
        try:
            signature.bind([], [])
        except TypeError:
            raise TypeError(f"reward_fn must be {allowed}: it is called as reward_fn(prompts, responses), "
                            f"but its signature is {signature}") from None
    return reward_fn


def score_groups(task, reward_fn, g: Groups) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward, r*) of every sampled response: ``reward_fn``'s score (None: r* itself, computed once),
    checked by ``check_rewards``, and the verifiable r* logged beside it."""
    r_star = task.true_rewards(g.prompts, g.text)
    if reward_fn is None:
        return r_star.to(g.logp), r_star
    n = len(g.text)  # counted before the call: reward_fn gets copies, so what it does to its lists stays there
    rewards = reward_fn(list(g.prompts), list(g.text))
    return check_rewards("reward_fn", rewards, n, g.logp.device, g.logp.dtype), r_star


def group_metrics(g: Groups, rewards: torch.Tensor, r_star: torch.Tensor, k: int) -> dict:
    """The per-update log entries both group trainers share (TRL's names where TRL has them)."""
    grouped = rewards.view(-1, k)
    return {"reward": rewards.mean(), "reward_std": grouped.std(1).mean(),
            "frac_reward_zero_std": (grouped == grouped[:, :1]).all(1).float().mean(),
            "kl/exact_per_sequence": g.kl.mean(), "entropy": g.entropy,
            "completions/mean_length": g.mask.sum(1).float().mean(),
            "completions/clipped_ratio": 1.0 - g.finished.float().mean(), "r_star": r_star.mean()}
