"""Chapter 6: one reward-KL frontier for every method of the book (DPO paper, Figure 2, left).

``sweep`` trains each method at each beta and seed from chapter 4's pi_ref, and measures mean r*
and KL(pi || pi_ref) on held-out prompts (``rlnotes.rlhf.evaluate``). The online methods
(PPO-RLHF, RLOO, GRPO) optimise the verifiable reward r* itself; the offline ones (DPO, IPO)
learn from chapter 5's preference pairs, which were labelled by Bradley-Terry on r*.
``summarize`` gives the mean and spread over seeds, ``plot`` draws them.
"""

from __future__ import annotations

import dataclasses
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
    """Per (method, beta): ``n`` seeds, mean and sample std of ``r_star`` and ``kl``, mean ``seconds``."""
    groups = {}
    for row in rows:
        groups.setdefault((row["method"], row["beta"]), []).append(row)
    out = []
    for (method, beta), runs in groups.items():
        r, kl = np.array([x["r_star"] for x in runs]), np.array([x["kl"] for x in runs])
        spread = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0
        out.append({"method": method, "beta": beta, "n": len(runs), "r_star": float(r.mean()), "r_star_std": spread(r),
                    "kl": float(kl.mean()), "kl_std": spread(kl),
                    "seconds": float(np.mean([x["seconds"] for x in runs]))})
    return out


def plot(rows: list[dict], sft_r_star: float, ax=None):
    """Mean r* against mean KL per (method, beta), with error bars of one std over seeds and the
    seeds themselves as faint points; pi_ref at KL 0. Returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7.5, 4.8))[1]
    markers = dict(zip(METHODS, "^osDv"))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        color = f"C{i}"
        runs = [r for r in rows if r["method"] == method]
        ax.scatter([r["kl"] for r in runs], [r["r_star"] for r in runs], color=color, alpha=0.25, s=12)
        stats = sorted((s for s in summarize(runs)), key=lambda s: s["kl"])
        ax.errorbar([s["kl"] for s in stats], [s["r_star"] for s in stats], xerr=[s["kl_std"] for s in stats],
                    yerr=[s["r_star_std"] for s in stats], color=color, marker=markers.get(method, "o"),
                    capsize=3, label=method)
    ax.scatter([0], [sft_r_star], color="k", marker="s", label=r"$\pi_{ref}$")
    ax.set_xlabel(r"KL$[\pi\,\|\,\pi_{ref}]$ per response (nats)")
    ax.set_ylabel(r"mean true reward $r^*$ (held-out prompts)")
    ax.legend(fontsize=8)
    return ax
