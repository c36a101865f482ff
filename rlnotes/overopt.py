"""Chapter 7: reward over-optimisation, measured (Gao, Schulman and Hilton 2023).

A policy optimised against the proxy reward r_phi climbs r_phi; the true reward r* (which the toy
task knows) first climbs with it, then falls. Both policies of Gao et al. are measured here:

- best-of-n by the proxy (``bon_runs``): for each seed, one pool of N samples per prompt from
  pi_ref, scored once; every n <= N is read off the pool (``bestofn.bon_curve``), at
  KL(pi_bon || pi_ref) = log n - (n - 1)/n (eq. bon-kl; ``bestofn.bon_kl``);
- PPO against the proxy (``rl_runs``): ``rlhf.train`` at a small or zero beta, r_phi, r* and the
  exact KL logged per update.

The proxy is what chapter 4's PPO maximises: the reward model's score, less a penalty for a
response that never ends (``rlhf.RLHFConfig.missing_eos_penalty``; r_phi scores only what it is
shown, and never saw an unfinished response among its pairs),

    R_proxy(x, y) = r_phi(x, y) - penalty * [y has no EOS]                      (eq. overopt-proxy)

``reward_models`` fits reward models on fewer pairs (one per seed), so that best-of-n can be run
against each on the same pools: where the peak of r* moves with the reward model's data.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from . import bestofn, prepare, reward, rlhf, sentiment
from .parallel import pool_for
from .seeds import train_seeds
from .utils import check_in_range, check_positive_int

__all__ = ["proxy", "bon_seed", "bon_runs", "rl_runs", "reward_models", "test_accuracy", "MAX_SEEDS"]

MAX_SEEDS = 100  # seeds per call: each is a pool of samples or a training run


def proxy(r_phi, finished, penalty: float = 2.0) -> np.ndarray:
    """R_proxy = r_phi - penalty * [unfinished] (eq. overopt-proxy), elementwise; float64."""
    penalty = check_in_range("penalty", penalty, 0.0, float("inf"))
    r_phi, finished = np.asarray(r_phi, dtype=np.float64), np.asarray(finished, dtype=bool)
    if r_phi.shape != finished.shape:
        raise ValueError(f"r_phi and finished must have one shape, got {r_phi.shape} and {finished.shape}")
    return r_phi - penalty * ~finished


def _check_seeds(seeds) -> list[int]:
    seeds = [check_positive_int("seeds", s, 0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or len(seeds) > MAX_SEEDS:
        raise ValueError(f"seeds must be 1 to {MAX_SEEDS} distinct integers >= 0, got {seeds}")
    return seeds


def _check_ns(ns, N: int) -> list[int]:
    ns = [check_positive_int("ns", n) for n in ns]
    if not ns or max(ns) > N:
        raise ValueError(f"ns must be a non-empty list of sample counts <= N ({N}), got {ns}")
    return ns


def bon_seed(prepared, prompts: list[str], N: int, ns: list[int], penalty: float, seed: int,
             reward_models: dict | None = None) -> dict:
    """Best-of-n by the proxy of each scorer, from one pool of N samples per prompt (``seed``).

    Returns, per scorer (``"r_phi"``, then each of ``reward_models``), the mean over prompts of
    the best-of-n's ``proxy``, ``r_star`` and ``unfinished`` fraction for each n in ``ns``
    (``bestofn.bon_curve``) and ``kl_mc``, the plug-in KL of the pool (``bestofn.empirical_bon_kl``);
    and ``control``: r* of the best of n by r* itself.
    """
    pool = bestofn.sample_pool(prepared.sft, prepared, prompts, N, seed=seed, reward_models=reward_models)
    unfinished, out = 1.0 - pool["finished"], {}
    for name in ("r_phi", *(reward_models or {})):
        score = proxy(pool[name], pool["finished"], penalty)
        out[name] = {"proxy": bestofn.bon_curve(score, score, ns),
                     "r_star": bestofn.bon_curve(score, pool["r_star"], ns),
                     "unfinished": bestofn.bon_curve(score, unfinished, ns),
                     "kl_mc": np.array([bestofn.empirical_bon_kl(score, n) for n in ns])}
    # ties in r* broken by the proxy, so that the control's choice is defined
    out["control"] = bestofn.bon_curve(pool["r_star"] + 1e-6 * np.tanh(pool["r_phi"]), pool["r_star"], ns)
    return out


def _bon_job(prepared, prompts, N, ns, penalty, job):
    seed, rms = job
    torch.set_num_threads(1)
    return bon_seed(prepared, prompts, N, ns, penalty, seed, rms)


def bon_runs(prepared, prompts: list[str], N: int, ns, seeds, *, penalty: float = 2.0,
             reward_models: dict | None = None, workers=None) -> dict:
    """``bon_seed`` for each seed, on up to ``workers`` processes; the results stacked over seeds.

    ``reward_models``: {seed: {name: reward model}} (``reward_models()``'s result), each seed's pool
    scored by that seed's models too. ``workers``: a number of processes or a started ``parallel.Pool``. Returns {scorer: {key: [seeds, len(ns)]}}, ``control``
    [seeds, len(ns)], ``ns`` and ``kl`` (eq. bon-kl for each n).
    """
    prepared = prepare.check_prepared("prepared", prepared)
    prompts = sentiment.check_texts("prompts", prompts)
    N, seeds = check_positive_int("N", N), _check_seeds(seeds)
    ns = _check_ns(ns, N)
    if reward_models is not None and set(reward_models) != set(seeds):
        raise ValueError(f"reward_models must map each seed {seeds} to its models, got keys {sorted(reward_models)}")
    jobs = [(s, None if reward_models is None else reward_models[s]) for s in seeds]
    with pool_for(workers, len(seeds)) as pool:
        runs = pool.map(functools.partial(_bon_job, prepared, prompts, N, ns, penalty), jobs)
    out = {name: {k: np.stack([r[name][k] for r in runs]) for k in runs[0][name]}
           for name in runs[0] if name != "control"}
    return out | {"control": np.stack([r["control"] for r in runs]), "ns": np.array(ns),
                  "kl": np.array([bestofn.bon_kl(n) for n in ns])}


def rl_runs(prepared, seeds, *, workers=None, **overrides) -> dict:
    """``rlhf.train(prepared, seed=s, **overrides)`` for each seed (``seeds.train_seeds``'s pool).

    Returns [seeds, steps] arrays per update: ``r_phi``, ``r_star``, ``unfinished``, ``kl`` (exact,
    per sequence), ``distinct_1`` (the fraction of distinct words in the batch's responses), ``d`` =
    sqrt(kl) and ``proxy`` (eq. overopt-proxy, with the run's own penalty).
    """
    prepared = prepare.check_prepared("prepared", prepared)
    runs = train_seeds(rlhf.train, _check_seeds(seeds), workers=workers, prepared=prepared, **overrides)
    keys = {"r_phi": "r_phi", "r_star": "r_star", "unfinished": "completions/clipped_ratio",
            "kl": "kl/exact_per_sequence", "distinct_1": "distinct_1"}
    out = {k: np.stack([r.history.update_array(key) for r in runs.values()]) for k, key in keys.items()}
    penalty = next(iter(runs.values())).config.missing_eos_penalty
    return out | {"d": np.sqrt(np.maximum(out["kl"], 0.0)), "proxy": out["r_phi"] - penalty * out["unfinished"]}


def _rm_job(prepared, sizes, overrides, seed):
    torch.set_num_threads(1)
    order = torch.randperm(len(prepared.train_prefs), generator=torch.Generator().manual_seed(seed)).tolist()
    out = {}
    for k in sizes:
        prefs = prepared.train_prefs.subset(order[:k])
        rm = reward.train(prefs, sft=prepared.sft, tokenizer=prepared.tokenizer, seed=seed, **overrides).model
        out[f"{k} pairs"] = rm
    return seed, out


def reward_models(prepared, sizes, seeds, *, workers=None, **overrides) -> dict:
    """Reward models fitted on ``k`` of ``prepared``'s train pairs, for each k in ``sizes`` and each seed:
    {seed: {"<k> pairs": model}}. The seed draws the subset (nested: the first k of one permutation)
    and the initialisation; ``overrides`` go to ``reward.train`` (e.g. ``steps``)."""
    prepared = prepare.check_prepared("prepared", prepared)
    sizes = [check_positive_int("sizes", k) for k in sizes]
    if not sizes or max(sizes) > len(prepared.train_prefs):
        raise ValueError(f"sizes must be 1 to {len(prepared.train_prefs)} pairs (prepared.train_prefs), got {sizes}")
    seeds = _check_seeds(seeds)
    with pool_for(workers, len(seeds)) as pool:
        return dict(pool.map(functools.partial(_rm_job, prepared, sizes, overrides), seeds))


def test_accuracy(prepared, model) -> float:
    """The fraction of ``prepared.test_prefs`` that ``model`` ranks as the labeller did (``reward.preference_accuracy``)."""
    prepared = prepare.check_prepared("prepared", prepared)
    t = prepared.test_prefs
    score = lambda ys: model.score(prepared.tokenizer, list(t.prompts), list(ys))
    return reward.preference_accuracy(score(t.chosen), score(t.rejected))
