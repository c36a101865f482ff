"""The source post, checked: what the book measures where the post makes a claim of its own.

Used by chapter 4's "post, sentence by sentence" table (the figure of the post's DPO.png is
``rlnotes.plots.pipeline_figure``):

* ``centring_variance``: the post asks that the reward model be normalised so that
  E_{x,y}[r_phi(x, y)] = 0 "for all x" (per prompt) "to lower the variance"; ``RewardModel.normalize_``
  subtracts one global offset instead. Subtracting anything that does not depend on y leaves the
  mean of the policy-gradient estimate g = grad log pi(y|x) (r_phi(x, y) - b(x)) unchanged, since
  E_{y~pi}[grad log pi(y|x)] = 0 (eq. eq-pg-estimator with a baseline, chapter 1), so centring is a
  baseline: it can only change the estimate's variance. This measures that variance, both ways.
"""

from __future__ import annotations

import torch

from . import lm, sampling
from .utils import check_positive_int

CENTRINGS = ("uncentred", "global", "per_prompt")


def _score_grads(policy, prompt_ids, prompt_mask, ids, mask):
    """grad_theta log pi(y_i | x_i) for each sample i, one backward pass each, flattened: yields [P] vectors."""
    params = list(policy.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)        # a frozen policy (pi_SFT is frozen) still has a gradient
        for i in range(len(ids)):
            logp = lm.sequence_logprob(policy, prompt_ids[i:i + 1], prompt_mask[i:i + 1], ids[i:i + 1], mask[i:i + 1])
            grads = torch.autograd.grad(logp.sum(), params, allow_unused=True)
            yield torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]).double()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def centring_variance(policy, reward_model, tokenizer, task, *, n_prompts: int = 256, n_baseline: int = 16,
                      seed: int = 0, split: str = "train") -> dict:
    """Variance of the score-function estimate of grad_theta E_{x, y~pi}[r_phi(x, y)] with r_phi centred three ways.

    One response y_i ~ pi(.|x_i) for each of ``n_prompts`` prompts x_i ~ D (``task.prompts``); per sample
    the estimate is g_i = grad log pi(y_i|x_i) (r_i - b_i) (eq. eq-pg-estimator), with r_i the reward
    model's raw output (its head, before ``normalize_``'s offset) and the baseline b_i:

    * ``uncentred``: b = 0, the raw r_phi;
    * ``global``: b = the reward model's ``offset``, the library's E_{x,y}[r_phi] = 0 over all (x, y);
    * ``per_prompt``: b(x_i) = the mean raw r_phi of ``n_baseline`` other responses to x_i, the post's
      E_y[r_phi(x, y)] = 0 for all x (estimated from samples independent of y_i, so unbiased).

    The g_i are independent, so the variance of a batch mean of B of them is ``variance[...] / B``.
    Returns ``variance`` (the total variance tr Cov(g_i) per sample, unbiased), ``mean_norm`` (the norm
    of each variant's mean), ``best_constant`` (the constant b minimising the variance) and
    ``variance_best_constant``, ``constant_parabola`` (a2, a1, a0: the variance with any constant baseline c
    is a2 c^2 + a1 c + a0), ``offset``, the reward statistics ``reward_var`` (Var r_phi over
    (x, y)) and ``reward_var_within`` (the mean over prompts of Var_y r_phi), and ``score_mean_ratio``:
    ``norm(mean g)^2 / (tr Cov(g) / N)`` for g = grad log pi, near 1 when E[grad log pi] = 0 (the reason
    every centring leaves the mean alone).
    """
    n_prompts = check_positive_int("n_prompts", n_prompts, 2)
    n_baseline = check_positive_int("n_baseline", n_baseline)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    prompts = task.prompts(n_prompts, seed, split)
    L = task.max_response_tokens
    with torch.no_grad():
        p, pm = lm.encode_prompts(tokenizer, prompts, device)
        ids, mask = sampling.sample(policy, tokenizer, p, pm, L, generator=gen)
        offset = float(reward_model.offset)
        raw = (reward_model(p, pm, ids, mask) + offset).double().cpu()
        # the per-prompt baseline: n_baseline further responses to every prompt, never used for a gradient
        pb, pbm = p.repeat(n_baseline, 1), pm.repeat(n_baseline, 1)
        bids, bmask = sampling.sample(policy, tokenizer, pb, pbm, L, generator=gen)
        braw = (reward_model(pb, pbm, bids, bmask) + offset).double().cpu().reshape(n_baseline, n_prompts)
    b_prompt = braw.mean(0)
    was_training = policy.training
    policy.eval()
    with torch.enable_grad():
        out = centring_moments(_score_grads(policy, p, pm, ids, mask), raw, b_prompt, offset)
    policy.train(was_training)
    return out | {"offset": offset, "reward_mean_raw": raw.mean().item(), "reward_var": raw.var().item(),
                  "reward_var_within": braw.var(0).mean().item(), "n_prompts": n_prompts,
                  "n_distinct_prompts": len(set(prompts))}


def centring_moments(grads, raw: torch.Tensor, b_prompt: torch.Tensor, offset: float) -> dict:
    """The statistics of ``centring_variance`` from per-sample score vectors g_i = grad log pi(y_i|x_i)
    (an iterable of [P] tensors), raw rewards R_i, per-prompt baselines b(x_i) and the global offset.

    Keeps three running sums (sum g_i, sum g_i R_i, sum g_i b(x_i)) and the squared norms ``norm(g_i)^2``, so
    memory stays at three parameter vectors however many samples there are. The total variance of
    g_i (R_i - b_i) is ``(sum_i norm(g_i)^2 (R_i - b_i)^2 - N norm(mean)^2) / (N - 1)``.
    """
    raw, b_prompt = torch.as_tensor(raw, dtype=torch.float64), torch.as_tensor(b_prompt, dtype=torch.float64)
    N = len(raw)
    if N < 2 or b_prompt.shape != raw.shape:
        raise ValueError(f"raw and b_prompt must be [N] with N >= 2, got {tuple(raw.shape)} and {tuple(b_prompt.shape)}")
    sq = torch.zeros(N, dtype=torch.float64)
    G = A = C = 0
    for i, g in enumerate(grads):
        g = g.double()
        sq[i] = g @ g
        G, A, C = G + g, A + raw[i] * g, C + b_prompt[i] * g
    baselines = {"uncentred": torch.zeros_like(raw), "global": torch.full_like(raw, offset), "per_prompt": b_prompt}
    means = {"uncentred": A / N, "global": (A - offset * G) / N, "per_prompt": (A - C) / N}

    def total_var(w, m):
        return ((sq * w ** 2).sum().item() - N * (m @ m).item()) / (N - 1)

    variance = {name: total_var(raw - baselines[name], means[name]) for name in CENTRINGS}
    # the best constant c: minimise sum_i |g_i|^2 (R_i - c)^2 - |sum_i g_i (R_i - c)|^2 / N, a parabola in c
    c_best = (((sq * raw).sum() - (A @ G) / N) / (sq.sum() - (G @ G) / N)).item()
    cov_g = (sq.sum().item() - (G @ G).item() / N) / (N - 1)
    # the same variance for any constant c, as a parabola a2 c^2 + a1 c + a0
    parabola = tuple(x / (N - 1) for x in ((sq.sum() - (G @ G) / N).item(),
                                           (-2 * (sq * raw).sum() + 2 * (A @ G) / N).item(),
                                           ((sq * raw ** 2).sum() - (A @ A) / N).item()))
    return {"variance": variance, "mean_norm": {k: v.norm().item() for k, v in means.items()},
            "best_constant": c_best, "variance_best_constant": total_var(raw - c_best, (A - c_best * G) / N),
            "constant_parabola": parabola, "score_mean_ratio": (G @ G).item() / N ** 2 / (cov_g / N)}
