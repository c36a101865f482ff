"""Chapter 6: one reward-KL frontier for every method of the book (DPO paper, Figure 2, left).

``sweep`` trains each method at each beta and seed from chapter 4's pi_ref, and measures mean r*
and KL(pi || pi_ref) on held-out prompts (``rlnotes.rlhf.evaluate``). The online methods
(PPO-RLHF, RLOO, GRPO) optimise the verifiable reward r* itself; the offline ones (DPO, IPO)
learn from chapter 5's preference pairs, which were labelled by Bradley-Terry on r*.
``summarize`` gives the mean and spread over seeds (sample std and min-max), ``format_table``
prints it, ``plot`` draws it; ``budget`` counts what each run spends (samples, Adam steps), and
``gap_to_curve`` measures how far one method's points lie below another's frontier.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from . import dpo, grpo, ipo, rlhf, rloo

METHODS = ("PPO", "DPO", "IPO", "RLOO", "GRPO")


def with_true_reward(prepared):
    """``prepared`` with the verifiable reward r* (``rloo.VerifiableReward``) in place of r_phi."""
    return dataclasses.replace(prepared, reward_model=rloo.VerifiableReward(prepared.task, prepared.tokenizer))


def train_method(method: str, prepared, beta: float, seed: int, data: dict | None = None, **settings):
    """Train ``method`` (one of ``METHODS``) at ``beta`` and ``seed``; returns ``(model, history)``,
    the trained causal LM and its ``History``.

    PPO is chapter 4's ``rlhf.train_ppo`` on r* (no unfinished-text penalty: r* has its own),
    DPO chapter 5's ``dpo.train``: the only two calls into those trainers in chapter 6. ``data``
    is ``prepared.train_prefs`` encoded (computed if None); ``settings`` go to the trainer.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("DPO", "IPO") and data is None:
        data = prepared.train_prefs.encode(prepared.tokenizer)
    if method == "PPO":
        out = rlhf.train_ppo(with_true_reward(prepared), beta=beta, seed=seed, missing_eos_penalty=0.0, **settings)
    elif method == "DPO":
        out = dpo.train(None, prepared.sft, data, beta=beta, seed=seed, **settings)
    elif method == "IPO":
        out = ipo.train(prepared.sft, data, beta=beta, seed=seed, **settings)
    else:
        out = (rloo if method == "RLOO" else grpo).train(prepared, beta=beta, seed=seed, **settings)
    return out.model, out.history


def sweep(prepared, betas: dict, seeds, settings: dict | None = None) -> list[dict]:
    """Train every method of ``betas`` (method -> list of beta) at every seed; one row per run:
    ``method``, ``beta``, ``seed``, ``r_star`` and ``kl`` on ``prepared.eval_prompts``, ``seconds``."""
    settings = settings or {}
    data = prepared.train_prefs.encode(prepared.tokenizer)
    rows = []
    for method, method_betas in betas.items():
        for beta in method_betas:
            for seed in seeds:
                start = time.perf_counter()
                model, _ = train_method(method, prepared, beta, seed, data, **settings.get(method, {}))
                seconds = time.perf_counter() - start
                m = rlhf.evaluate(model, prepared)
                rows.append({"method": method, "beta": beta, "seed": seed, "r_star": m["r_star"], "kl": m["kl/exact_per_sequence"],
                             "seconds": seconds})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, beta): ``n`` seeds, mean, sample std, min and max of ``r_star`` and ``kl``
    (``r_star_min`` ... ``kl_max``), mean ``seconds``."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["beta"]), []).append(row)
    out = []
    for (method, beta), runs in groups.items():
        r, kl = np.array([x["r_star"] for x in runs]), np.array([x["kl"] for x in runs])
        spread = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0
        out.append({"method": method, "beta": beta, "n": len(runs), "r_star": float(r.mean()), "r_star_std": spread(r),
                    "kl": float(kl.mean()), "kl_std": spread(kl),
                    "r_star_min": float(r.min()), "r_star_max": float(r.max()),
                    "kl_min": float(kl.min()), "kl_max": float(kl.max()),
                    "seconds": float(np.mean([x["seconds"] for x in runs]))})
    return out


def format_table(table: list[dict]) -> str:
    """``summarize``'s rows as text: method, beta, seeds, mean r* [min, max] and mean KL [min, max]."""
    w = max([6] + [len(s["method"]) for s in table])
    lines = [f"{'method':{w}s} beta  seeds   mean r* [min, max] over seeds   KL nats [min, max]"]
    for s in table:
        lines.append(f"{s['method']:{w}s} {s['beta']:4.2f} {s['n']:4d}    {s['r_star']:+.3f} "
                     f"[{s['r_star_min']:+.3f}, {s['r_star_max']:+.3f}]      {s['kl']:5.2f} "
                     f"[{s['kl_min']:.2f}, {s['kl_max']:.2f}]")
    return "\n".join(lines)


def gap_to_curve(table: list[dict], reference: str, method: str) -> list[dict]:
    """How far each point of ``method`` lies below ``reference``'s frontier, from ``summarize``'s
    rows: ``reference``'s mean r* interpolated linearly in mean KL (its points sorted by KL) minus
    ``method``'s mean r*. Only points whose mean KL lies inside ``reference``'s KL range count (no
    extrapolation). One dict per such point: ``beta``, ``kl``, ``gap`` (positive: below)."""
    ref = sorted((s for s in table if s["method"] == reference), key=lambda s: s["kl"])
    points = [s for s in table if s["method"] == method]
    if len(ref) < 2:
        raise ValueError(f"reference must have at least 2 points in table, got {len(ref)} for {reference!r}")
    if not points:
        raise ValueError(f"method {method!r} has no point in table")
    kl, r = [s["kl"] for s in ref], [s["r_star"] for s in ref]
    return [{"beta": s["beta"], "kl": s["kl"], "gap": float(np.interp(s["kl"], kl, r) - s["r_star"])}
            for s in points if kl[0] <= s["kl"] <= kl[-1]]


def budget(method: str, settings: dict | None = None, n_pairs: int | None = None) -> dict:
    """What one run of ``method`` with ``settings`` (as for ``train_method``) spends: ``updates``
    (collect-then-update iterations, or epochs for DPO/IPO), ``adam_steps`` (optimiser steps),
    ``responses`` (responses sampled from the policy; 0 offline), ``pairs`` (preference pairs
    read, ``epochs * n_pairs``; 0 online) and ``lr``, from each trainer's config defaults."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    settings = dict(settings or {})
    if method in ("DPO", "IPO"):
        if not isinstance(n_pairs, int) or n_pairs < 1:
            raise ValueError(f"n_pairs must be a positive int for {method}, got {n_pairs!r}")
        cfg = (dpo.DPOConfig if method == "DPO" else ipo.IPOConfig)(**settings)
        return {"updates": cfg.epochs, "adam_steps": cfg.epochs * math.ceil(n_pairs / cfg.batch_size),
                "responses": 0, "pairs": cfg.epochs * n_pairs, "lr": cfg.lr}
    if method == "PPO":
        cfg = rlhf.RLHFConfig(**settings)
        n, per_epoch = cfg.batch_size, cfg.minibatch_size or cfg.batch_size
        epochs = cfg.epochs
    elif method == "GRPO":
        cfg = grpo.GRPOConfig(**settings)
        n = cfg.batch_size * cfg.num_generations
        per_epoch, epochs = cfg.minibatch_size or n, cfg.epochs
    else:
        cfg = rloo.RLOOConfig(**settings)
        n = per_epoch = cfg.batch_size * cfg.k
        epochs = 1
    return {"updates": cfg.steps, "adam_steps": cfg.steps * epochs * math.ceil(n / min(per_epoch, n)),
            "responses": cfg.steps * n, "pairs": 0, "lr": cfg.lr}


def plot(rows: list[dict], sft_r_star: float, ax=None, spread: str = "std"):
    """Mean r* against mean KL per (method, beta), with error bars of one std over seeds
    (``spread="std"``) or from the lowest to the highest seed (``spread="range"``), and the seeds
    themselves as faint points; pi_ref at KL 0. Returns the axes."""
    import matplotlib.pyplot as plt

    if spread not in ("std", "range"):
        raise ValueError(f"spread must be 'std' or 'range', got {spread!r}")

    ax = ax or plt.subplots(figsize=(7.5, 4.8))[1]
    markers = dict(zip(METHODS, "^osDv"))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        color = f"C{i}"
        runs = [r for r in rows if r["method"] == method]
        ax.scatter([r["kl"] for r in runs], [r["r_star"] for r in runs], color=color, alpha=0.25, s=12)
        stats = sorted((s for s in summarize(runs)), key=lambda s: s["kl"])
        if spread == "std":
            xerr, yerr = [s["kl_std"] for s in stats], [s["r_star_std"] for s in stats]
        else:
            xerr = [[s["kl"] - s["kl_min"] for s in stats], [s["kl_max"] - s["kl"] for s in stats]]
            yerr = [[s["r_star"] - s["r_star_min"] for s in stats], [s["r_star_max"] - s["r_star"] for s in stats]]
        ax.errorbar([s["kl"] for s in stats], [s["r_star"] for s in stats], xerr=xerr,
                    yerr=yerr, color=color, marker=markers.get(method, "o"),
                    capsize=3, label=method)
    ax.scatter([0], [sft_r_star], color="k", marker="s", label=r"$\pi_{ref}$")
    ax.set_xlabel(r"KL$[\pi\,\|\,\pi_{ref}]$ per response (nats)")
    ax.set_ylabel(r"mean true reward $r^*$ (held-out prompts)")
    ax.legend(fontsize=8)
    return ax
