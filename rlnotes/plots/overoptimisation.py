"""Chapter 7's figures: best-of-n against n, and the true reward against sqrt(KL) for best-of-n and RL
(Gao, Schulman and Hilton 2023, Figure 1), with the fitted functional forms."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import bestofn
from .base import new_axes, panel_axes

PROXY, TRUE, CONTROL = "#ff7f0e", "#2ca02c", "#7f7f7f"


def _band(ax, x, runs, color, label, marker="o"):
    """Mean over seeds (rows of ``runs``) with a band of +- one standard error."""
    runs = np.asarray(runs, dtype=np.float64)
    mean = runs.mean(0)
    se = runs.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
    ax.plot(x, mean, marker=marker, ms=3.5, color=color, label=label)
    ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.2, lw=0)


def best_of_n_curves(bon: Mapping, *, scorer: str = "r_phi", ax=None):
    """Mean proxy reward and r* of the best of n (by the proxy), and r* of the best of n by r* itself,
    against n (log axis): ``overopt.bon_runs``'s result, bands of +- one standard error over seeds."""
    ax = new_axes(ax, (6.0, 3.6))
    ns, runs = np.asarray(bon["ns"]), bon[scorer]
    _band(ax, ns, runs["proxy"], PROXY, "proxy $r_\\phi$ − penalty, best by the proxy")
    _band(ax, ns, runs["r_star"], TRUE, "true $r^*$, best by the proxy")
    _band(ax, ns, bon["control"], CONTROL, "true $r^*$, best by $r^*$ (control)", marker="s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (samples from $\\pi_{\\mathrm{ref}}$ per prompt)")
    ax.set_ylabel("mean reward of the chosen response")
    ax.axhline(0, color="#bbb", lw=0.8)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def overoptimisation(bon: Mapping, rl: Mapping, fits: Mapping | None = None, *, edges=None, ax=None):
    """Gao et al.'s Figure 1 on the toy task, two panels against d = sqrt(KL(pi || pi_ref)): the gain in
    r* (left) and in the proxy (right) over pi_ref, for best-of-n (``bon``, at the closed-form KL) and
    for RL (``rl``, ``overopt.rl_runs``: each run's updates averaged in the bins ``edges``), +- one
    standard error over seeds. ``fits``: {"bon": fit_bon's result, "rl": fit_rl's} drawn dashed."""
    left, right = panel_axes(ax, 2, width=4.3)
    d_bon = np.sqrt(np.asarray(bon["kl"]))
    edges = np.linspace(0, float(np.max(rl["d"])) + 1e-9, 9) if edges is None else np.asarray(edges)
    centres = (edges[:-1] + edges[1:]) / 2
    for axis, key in ((left, "r_star"), (right, "proxy")):
        gain = bon["r_phi"][key] - bon["r_phi"][key][:, :1]
        _band(axis, d_bon, gain, "#1f77b4", "best-of-n")
        rl_gain = rl[key] - rl[key][:, :1]
        binned = bestofn.bin_means(rl["d"], rl_gain, edges)
        keep = ~np.isnan(binned).any(0)
        _band(axis, centres[keep], binned[:, keep], "#d62728", "RL (PPO, β = 0)", marker="s")
        axis.axhline(0, color="#bbb", lw=0.8)
        axis.set_xlabel("$d = \\sqrt{\\mathrm{KL}(\\pi\\,\\|\\,\\pi_{\\mathrm{ref}})}$ (nats$^{1/2}$)")
    if fits:
        grid = np.linspace(0, max(d_bon.max(), edges[-1]), 200)
        for kind, form, color in (("bon", bestofn.bon_form, "#1f77b4"), ("rl", bestofn.rl_form, "#d62728")):
            if kind in fits:
                f = fits[kind]
                left.plot(grid, form(grid, f["alpha"], f["beta"]), "--", color=color, lw=1.2,
                          label=f"fit: α = {f['alpha']:.2f}, β = {f['beta']:.2f}")
    left.set_ylabel("gain in true $r^*$ over $\\pi_{\\mathrm{ref}}$")
    right.set_ylabel("gain in the proxy over $\\pi_{\\mathrm{ref}}$")
    left.legend(fontsize=7.5, loc="lower left")
    right.legend(fontsize=7.5, loc="upper left")
    return [left, right]


def peak_by_reward_model(bon: Mapping, scorers: Mapping[str, str], *, ax=None):
    """r* of best-of-n against sqrt(KL) for several reward models (``scorers``: {key in bon: label}),
    +- one standard error over seeds: where the true reward peaks for each."""
    ax = new_axes(ax, (5.6, 3.5))
    d = np.sqrt(np.asarray(bon["kl"]))
    for (key, label), color in zip(scorers.items(), ("#1f77b4", "#9467bd", "#8c564b", "#e377c2")):
        _band(ax, d, bon[key]["r_star"], color, label)
    ax.set_xlabel("$d = \\sqrt{\\mathrm{KL}(\\pi_{\\mathrm{bon}}\\,\\|\\,\\pi_{\\mathrm{ref}})}$ (nats$^{1/2}$)")
    ax.set_ylabel("true $r^*$ of the best of n")
    ax.legend(fontsize=8)
    return ax
