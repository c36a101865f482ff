"""The figures of the control chapters (1-3): training curves over seeds and what one update does.

- :func:`learning_curves`: return against environment steps, the mean over seeds with a band
  (chapters 1-3);
- :func:`kl_per_update`: how far each update moved the policy, on a log axis in nats (chapters 1-3);
- :func:`trpo_line_search`: TRPO's full steps and the steps its line search took (chapter 2);
- :func:`ppo_one_batch`: PPO's loss optimised for many epochs on one batch, clipped or not (chapter 3);
- :func:`passes_per_update`: what one update computes, TRPO against PPO (chapter 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .base import RETURN_LABEL, STEPS_LABEL, as_runs, new_axes


def learning_curves(runs, grid, *, ax=None, baseline: tuple[float, str] | None = None,
                    title: str | None = None, ylim: tuple[float, float] | None = None,
                    legend_loc: str = "best", colors: Mapping[str, str] | None = None,
                    band: str = "minmax"):
    """Mean over seeds of each learner's return curve (``History.curve(grid)``), with a band:
    ``band="minmax"`` from the lowest to the highest seed, ``band="se"`` the mean +- 2 standard
    errors over seeds (about a 95% interval for the mean, where a rerun's mean should land).

    ``runs`` maps a label to the histories of that learner's seeds (a list, a {seed: History}
    dict or one History); ``baseline=(value, label)`` adds a dotted horizontal reference line
    (a random policy, the "solved" threshold). One line and one band per learner, in the colours
    of ``colors`` ({label: colour}) or of matplotlib's cycle.
    """
    runs = as_runs(runs)
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or len(grid) < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 environment-step counts, got shape {grid.shape}")
    if band not in ("minmax", "se"):
        raise ValueError(f"band must be 'minmax' or 'se', got {band!r}")
    ax = new_axes(ax, (6.5, 3.8))
    for label, histories in runs.items():
        curves = np.stack([np.asarray(h.curve(grid), dtype=float) for h in histories])
        seeds = f" (mean of {len(histories)} seeds)" if len(histories) > 1 else ""
        mean = np.nanmean(curves, axis=0)
        line, = ax.plot(grid, mean, label=label + seeds, color=(colors or {}).get(label))
        if len(histories) > 1:
            if band == "se":
                n = np.sum(np.isfinite(curves), axis=0)
                half = 2 * np.nanstd(curves, axis=0, ddof=1) / np.sqrt(n)
                low, high = mean - half, mean + half
            else:
                low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if baseline is not None:
        value, label = baseline
        ax.axhline(value, color="k", ls=":", lw=1, label=label)
    ax.set_xlabel(STEPS_LABEL)
    ax.set_ylabel(RETURN_LABEL)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title or ("Return: mean over seeds, band from min to max" if band == "minmax"
                           else "Return: mean over seeds, band +- 2 standard errors"))
    ax.legend(loc=legend_loc, fontsize=8)
    return ax


def kl_per_update(runs, *, ax=None, key: str = "kl/exact_per_state", floor: float = 1e-12,
                  lines: Sequence[tuple[float, str]] = (), title: str | None = None,
                  colors: Mapping[str, str] | None = None):
    """The KL divergence between consecutive policies at every update, on a log axis in nats.

    ``runs`` as in :func:`learning_curves`; every seed is drawn (thin lines, one colour per
    learner, from ``colors`` or the cycle, labelled once). Values below ``floor`` (an update that
    did not move the policy) are drawn at ``floor``, which the axis label says. ``lines`` adds dashed reference levels,
    e.g. ``[(0.01, "TRPO's delta = 0.01")]``. x is ``env_steps`` where the history logs it,
    the update number otherwise.
    """
    runs = as_runs(runs)
    colors = colors or {}
    if not floor > 0:
        raise ValueError(f"floor must be > 0 (a log axis), got {floor}")
    ax = new_axes(ax, (6.5, 3.8))
    use_steps = all("env_steps" in h.updates for hs in runs.values() for h in hs)
    for i, (label, histories) in enumerate(runs.items()):
        for j, h in enumerate(histories):
            kl = np.maximum(np.asarray(h.update_array(key), dtype=float), floor)
            x = h.update_array("env_steps") if use_steps else np.arange(1, len(kl) + 1)
            ax.plot(x, kl, color=colors.get(label, f"C{i}"), lw=0.8, alpha=0.8, label=label if j == 0 else None)
    for k, (value, label) in enumerate(lines):
        ax.axhline(value, color="k", ls=["--", ":", "-."][k % 3], lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(STEPS_LABEL if use_steps else "update")
    ax.set_ylabel(f"KL(old || new) per update [nats]\n(values below {floor:g} drawn at {floor:g})")
    ax.set_title(title or "How far each update moves the policy")
    ax.legend(fontsize=8)
    return ax


def trpo_line_search(runs, delta: float, *, ax=None):
    """TRPO's trust region at work, over every update of every seed (chapter 2).

    Left: the KL of the full natural-gradient step (the quadratic model's guess, crosses) and of
    the step taken after the line search (dots), per update, against ``delta``: every dot is at
    or under the line, and the crosses above it are the steps the line search shrank. Right: the
    full step's KL in units of ``delta``, the distribution over updates, with the boundary at 1.
    Reads the ``kl/exact_per_state``, ``kl/exact_per_state_full_step``, ``backtracks`` and
    ``env_steps`` logs of ``rlnotes.trpo.train``. ``ax``: the two axes to draw on (a new figure
    otherwise). Returns the two axes.
    """
    runs = as_runs(runs)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})[1]
    left, right = ax
    full_all = []
    for i, (label, histories) in enumerate(runs.items()):
        for j, h in enumerate(histories):
            steps = h.update_array("env_steps")
            full, taken = h.update_array("kl/exact_per_state_full_step"), h.update_array("kl/exact_per_state")
            full_all.append(full)
            left.plot(steps, full, "x", ms=4, color=f"C{i}", alpha=0.5)
            left.plot(steps, taken, ".", ms=4, color=f"C{i}", label=label if j == 0 else None)
    left.plot([], [], "x", color="gray", label="full step (before the line search)")
    left.plot([], [], ".", color="gray", label="step taken")
    left.axhline(delta, color="k", ls="--", lw=1, label=rf"trust region $\delta$ = {delta:g}")
    left.set_xlabel(STEPS_LABEL)
    left.set_ylabel(r"KL($\pi_\mathrm{old}$ || $\pi_\mathrm{new}$) [nats]")
    left.set_title("KL of each update: full step and step taken")
    left.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ratio = np.concatenate(full_all) / delta
    above = int(np.sum(ratio > 1))
    right.hist(ratio, bins=np.linspace(0, max(1.5, float(ratio.max()) * 1.05), 31), color="C7")
    right.axvline(1, color="k", ls="--", lw=1)
    right.set_xlabel(r"full-step KL / $\delta$")
    right.set_ylabel("updates")
    right.set_title(f"{above} of {len(ratio)} full steps beyond $\\delta$,\nshrunk by the line search", fontsize=10)
    return left, right


def ppo_one_batch(clipped, unclipped, *, eps: float, bound: float | None = None, ax=None):
    """PPO's loss optimised for many epochs on one batch (chapter 3), clipped against not clipped.

    ``clipped`` and ``unclipped`` are the per-epoch logs of ``rlnotes.ppo.epochs_on_one_batch``
    (a ``History`` or its ``updates`` dict) with clip range ``eps`` and with the clip removed.
    Left: the exact mean KL[old || new] after each epoch, on a log axis in nats, for both runs,
    with ``bound`` (the KL the clip range alone would allow, ``ppo.kl_bound_inside_clip``) as a
    dotted line. Right: the fraction of the clipped run's ratios outside [1 - eps, 1 + eps].
    ``ax``: the two axes to draw on (a new figure otherwise). Returns the two axes.
    """
    logs = []
    for name, run in (("clipped", clipped), ("unclipped", unclipped)):
        u = getattr(run, "updates", run)
        if not isinstance(u, Mapping) or "kl/exact_per_state" not in u:
            raise ValueError(f"{name} must be an epochs_on_one_batch history (with kl/exact_per_state per epoch)")
        logs.append({k: np.asarray(v, dtype=float) for k, v in u.items()})
    clipped, unclipped = logs
    if "outside" not in clipped:
        raise ValueError("clipped lacks the log key 'outside' (fraction of ratios outside the clip range)")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(1, 2, figsize=(10, 3.6))[1]
    left, right = ax
    band = f"$[{1 - eps:g}, {1 + eps:g}]$"
    left.plot(np.arange(1, len(clipped["kl/exact_per_state"]) + 1), clipped["kl/exact_per_state"], color="C2",
              label=rf"clipped, $\epsilon$ = {eps:g}")
    left.plot(np.arange(1, len(unclipped["kl/exact_per_state"]) + 1), unclipped["kl/exact_per_state"], color="C3",
              label="not clipped")
    if bound is not None:
        left.axhline(bound, color="C2", ls=":", label=f"KL if all ratios stay in {band}")
    left.set_yscale("log")
    left.set_xlabel("epochs on the same batch")
    left.set_ylabel(r"mean KL($\pi_\mathrm{old}$ || $\pi$) [nats]")
    left.set_title("How far the policy moves")
    left.legend(fontsize=8)
    right.plot(np.arange(1, len(clipped["outside"]) + 1), clipped["outside"], color="C2",
               label=rf"clipped, $\epsilon$ = {eps:g}")
    right.set_xlabel("epochs on the same batch")
    right.set_ylabel(f"fraction of ratios outside {band}")
    right.set_title("Ratios that left the clip range")
    right.legend(fontsize=8)
    return left, right


def passes_per_update(costs: Mapping[str, Mapping[str, float]], *, ax=None, title: str | None = None):
    """What one update computes, as stacked horizontal bars: one bar per algorithm (chapter 3).

    ``costs`` maps an algorithm to {kind of pass: passes per update}, e.g. {"TRPO":
    {"forward + backward": 2, "Hessian-vector products": 11, ...}, "PPO": {...}}; the same kind
    gets the same colour in every bar, and each segment is labelled with its count.
    Returns the axes.
    """
    if not isinstance(costs, Mapping) or not costs:
        raise TypeError("costs must be a non-empty mapping {algorithm: {kind: passes}}, "
                        f"got {type(costs).__name__}")
    kinds = list(dict.fromkeys(k for parts in costs.values() for k in parts))
    for name, parts in costs.items():
        bad = {k: v for k, v in parts.items() if not (np.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"costs[{name!r}] must hold finite counts >= 0, got {bad}")
    ax = new_axes(ax, (7.5, 0.9 + 0.7 * len(costs)))
    names = list(costs)
    for i, kind in enumerate(kinds):
        left = [sum(costs[n].get(k, 0) for k in kinds[:i]) for n in names]
        width = [costs[n].get(kind, 0) for n in names]
        bars = ax.barh(names, width, left=left, color=f"C{i}", label=kind, height=0.6)
        ax.bar_label(bars, labels=[f"{w:g}" if w else "" for w in width], label_type="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("passes through the networks per update (batch of 512 steps)")
    ax.set_title(title or "What one update computes")
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return ax
