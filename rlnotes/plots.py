"""The figures that recur across chapters, so that a notebook cell reads as one call.

- :func:`learning_curves`: return against environment steps, the mean over seeds with the
  min-max band (chapters 1-3);
- :func:`kl_per_update`: how far each update moved the policy, on a log axis in nats
  (chapters 1-3);
- :func:`reward_kl_frontier`: reward against KL to the reference policy (chapters 4-5);
- :func:`ppo_one_batch`: PPO's loss optimised for many epochs on one batch, clipped or not
  (chapter 3);
- :func:`passes_per_update`: what one update computes, TRPO against PPO (chapter 3).

Each takes an optional ``ax`` (a new figure otherwise), draws, labels the axes with their units,
and returns the axes; the caller ends the cell with ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RETURN_LABEL = "mean return, last 20 episodes"
STEPS_LABEL = "environment steps"


def _axes(ax, figsize):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _runs(runs) -> dict[str, list]:
    """{label: [History, ...]} from a mapping of label to one History or a sequence of them."""
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError("runs must be a non-empty mapping {label: History or [History, ...]}, "
                        f"got {type(runs).__name__}")
    out = {}
    for label, value in runs.items():
        histories = list(value.values()) if isinstance(value, Mapping) else (
            list(value) if isinstance(value, Sequence) else [value])
        if not histories:
            raise ValueError(f"runs[{label!r}] holds no History")
        out[str(label)] = histories
    return out


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
    runs = _runs(runs)
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or len(grid) < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 environment-step counts, got shape {grid.shape}")
    if band not in ("minmax", "se"):
        raise ValueError(f"band must be 'minmax' or 'se', got {band!r}")
    ax = _axes(ax, (6.5, 3.8))
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
    learner, from ``colors`` or the cycle, labelled once). Values below ``floor`` (an update that did not move the policy)
    are drawn at ``floor``, which the axis label says. ``lines`` adds dashed reference levels,
    e.g. ``[(0.01, "TRPO's delta = 0.01")]``. x is ``env_steps`` where the history logs it,
    the update number otherwise.
    """
    runs = _runs(runs)
    colors = colors or {}
    if not floor > 0:
        raise ValueError(f"floor must be > 0 (a log axis), got {floor}")
    ax = _axes(ax, (6.5, 3.8))
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


def reward_kl_frontier(points, *, ax=None, rewards: Mapping[str, str] | None = None,
                       kl_key: str = "kl/exact_per_sequence", annotate: bool = True,
                       title: str | None = None, symlog: bool = True):
    """Reward against KL to the reference policy: one marked line per reward, points in order.

    ``points`` is a sequence of ``(name, metrics)`` with ``metrics[kl_key]`` and every key of
    ``rewards`` ({metric key: legend label}; default: the true reward ``r_star`` and the reward
    model ``r_phi``); the points are joined in order of KL and the first reward's points are
    annotated with their names. The x axis is symlog (linear below 1 nat) unless ``symlog=False``.
    """
    rewards = dict(rewards or {"r_star": "true reward $r^*$", "r_phi": r"reward model $r_\phi$"})
    points = [(str(n), m) for n, m in points]
    if not points:
        raise ValueError("points must hold at least one (name, metrics) pair")
    for name, metrics in points:
        missing = [k for k in [kl_key, *rewards] if k not in metrics]
        if missing:
            raise ValueError(f"points: the metrics of {name!r} lack {missing}")
    points.sort(key=lambda p: p[1][kl_key])
    ax = _axes(ax, (6, 3.8))
    kls = [m[kl_key] for _, m in points]
    for (key, label), marker in zip(rewards.items(), ["o-", "s--", "^:", "d-."]):
        ax.plot(kls, [m[key] for _, m in points], marker, label=label)
    if annotate:
        first = next(iter(rewards))
        for name, m in points:
            ax.annotate(name, (m[kl_key], m[first]), textcoords="offset points", xytext=(0, -15),
                        ha="center", fontsize=9)
    if symlog:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(r"KL($\pi$ || $\pi_\mathrm{ref}$) [nats]" + (", symlog scale" if symlog else ""))
    ax.set_ylabel("mean reward of samples")
    ax.set_title(title or "Reward against KL to the reference policy")
    ax.legend(fontsize=8)
    return ax


def trpo_line_search(runs, delta: float, *, axes=None):
    """TRPO's trust region at work, over every update of every seed (chapter 2).

    Left: the KL of the full natural-gradient step (the quadratic model's guess, crosses) and of
    the step taken after the line search (dots), per update, against ``delta``: every dot is at
    or under the line, and the crosses above it are the steps the line search shrank. Right: the
    full step's KL in units of ``delta``, the distribution over updates, with the boundary at 1.
    Reads the ``kl/exact_per_state``, ``kl/exact_per_state_full_step``, ``backtracks`` and
    ``env_steps`` logs of ``rlnotes.trpo.train``. Returns the two axes.
    """
    runs = _runs(runs)
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})[1]
    left, right = axes
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


def dpo_training(history, *, reference_accuracy: float | None = None, smooth: int = 6, axes=None):
    """DPO's training logs in four panels, one quantity per axis (chapter 5).

    ``history`` is ``rlnotes.dpo.train(...).history`` (or its ``updates`` dict) with TRL's keys:
    the loss per batch and held-out (against log 2, the loss at the start); the implicit rewards
    of chosen and rejected responses and their margin; the log-probabilities of both; the
    preference accuracy on training batches and held out (against ``reference_accuracy``, e.g.
    the reward model's), with the true reward of held-out samples on a second axis where it was
    logged (``eval/r_star``). Batch-level curves are moving means over ``smooth`` batches.
    Returns the 2 x 2 axes.
    """
    u = {k: np.asarray(v, dtype=float) for k, v in getattr(history, "updates", history).items()}
    needed = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
              "logps/rejected", "rewards/accuracies"]
    missing = [k for k in needed if k not in u]
    if missing:
        raise ValueError(f"history lacks the DPO log keys {missing}")
    if not (isinstance(smooth, int) and 1 <= smooth <= len(u["loss"])):
        raise ValueError(f"smooth must be an int in [1, {len(u['loss'])}], got {smooth!r}")
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(2, 2, figsize=(10, 6.5))[1]
    steps = np.arange(1, len(u["loss"]) + 1)
    s_steps = steps[smooth - 1:]
    mean = lambda v: np.convolve(v, np.ones(smooth) / smooth, mode="valid")
    held_out = "eval/step" in u
    (loss, rew), (logp, acc) = axes
    loss.plot(steps, u["loss"], alpha=0.35, label="train loss (per batch)")
    if held_out:
        loss.plot(u["eval/step"], u["eval/loss"], "o-", label="held-out loss")
    loss.axhline(np.log(2), color="k", ls="--", lw=1, label="log 2")
    loss.set_ylabel("DPO loss")
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins"]:
        rew.plot(s_steps, mean(u[key]), label=key)
    rew.axhline(0, color="k", lw=0.8)
    rew.set_ylabel("implicit reward\n" r"$\beta\log\pi_\theta/\pi_\mathrm{ref}$ (moving mean)")
    for key in ["logps/chosen", "logps/rejected"]:
        logp.plot(s_steps, mean(u[key]), label=key)
    logp.set_ylabel(r"$\log\pi_\theta(y\mid x)$ [nats] (moving mean)")
    acc.plot(s_steps, mean(u["rewards/accuracies"]), label="train accuracy (moving mean)")
    if held_out:
        acc.plot(u["eval/step"], u["eval/accuracy"], "o-", label="held-out accuracy")
    if reference_accuracy is not None:
        acc.axhline(reference_accuracy, color="gray", ls=":", label="reward model's held-out accuracy")
    acc.set_ylabel("preference accuracy")
    if held_out and "eval/r_star" in u:
        twin = acc.twinx()
        twin.plot(u["eval/step"], u["eval/r_star"], "s--", color="C3", label="r* of held-out samples")
        twin.set_ylabel("mean true reward $r^*$", color="C3")
        handles = [h for a in (acc, twin) for h in a.get_legend_handles_labels()[0]]
        acc.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    else:
        acc.legend(fontsize=8)
    for ax in (loss, rew, logp):
        ax.legend(fontsize=8)
    for ax in (loss, rew, logp, acc):
        ax.set_xlabel("step (batch of preference pairs)")
    return axes


# --- ch3 ---

def ppo_one_batch(clipped, unclipped, *, eps: float, bound: float | None = None, axes=None):
    """PPO's loss optimised for many epochs on one batch (chapter 3), clipped against not clipped.

    ``clipped`` and ``unclipped`` are the per-epoch logs of ``rlnotes.ppo.epochs_on_one_batch``
    (a ``History`` or its ``updates`` dict) with clip range ``eps`` and with the clip removed.
    Left: the exact mean KL[old || new] after each epoch, on a log axis in nats, for both runs,
    with ``bound`` (the KL the clip range alone would allow, ``ppo.kl_bound_inside_clip``) as a
    dotted line. Right: the fraction of the clipped run's ratios outside [1 - eps, 1 + eps].
    Returns the two axes.
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
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 2, figsize=(10, 3.6))[1]
    left, right = axes
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
        raise TypeError(f"costs must be a non-empty mapping {{algorithm: {{kind: passes}}}}, got {type(costs).__name__}")
    kinds = list(dict.fromkeys(k for parts in costs.values() for k in parts))
    for name, parts in costs.items():
        bad = {k: v for k, v in parts.items() if not (np.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"costs[{name!r}] must hold finite counts >= 0, got {bad}")
    ax = _axes(ax, (7.5, 0.9 + 0.7 * len(costs)))
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


# --- ch4 ---

def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (len - window + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _panels(axes, n: int, width: float = 4.2):
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, n, figsize=(width * n + 0.5, 3.4), squeeze=False)[1][0]
    axes = list(np.atleast_1d(axes))
    if len(axes) != n:
        raise ValueError(f"axes must hold one axes per panel ({n}), got {len(axes)}")
    return axes


def batch_curves(history, panels: Mapping[str, str], *, smooth: int = 10,
                 lines: Mapping[str, Sequence[tuple[float, str]]] | None = None, axes=None,
                 xlabel: str = "step (mini-batch)", title: str | None = None):
    r"""A supervised run's logs, one panel per key: the value of every mini-batch (faint) and its
    moving mean over ``smooth`` batches (chapter 4's SFT and reward model).

    ``history`` is a ``TrainResult.history``; ``panels`` maps a logged key to its y label;
    ``lines`` maps a key to dotted reference levels ``[(value, label), ...]`` drawn in its panel
    ($\log |V|$ for the SFT loss, $\log 2$ and chance for the reward model). Returns the axes.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError(f"panels must be a non-empty mapping {{logged key: y label}}, got {panels!r}")
    values = {key: history.update_array(key) for key in panels}
    n = len(next(iter(values.values())))
    if not (isinstance(smooth, int) and 1 <= smooth <= n):
        raise ValueError(f"smooth must be an int in [1, {n}] (the steps logged), got {smooth!r}")
    axes = _panels(axes, len(panels))
    steps = np.arange(1, n + 1)
    for ax, (key, label) in zip(axes, panels.items()):
        line, = ax.plot(steps, values[key], lw=0.8, alpha=0.35, label="per mini-batch")
        ax.plot(steps[smooth - 1:], _moving_mean(values[key], smooth), color=line.get_color(),
                label=f"moving mean of {smooth}")
        for k, (value, ref) in enumerate((lines or {}).get(key, ())):
            ax.axhline(value, color="k", ls=[":", "--", "-."][k % 3], lw=1, label=ref)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def update_curves(runs, panels: Mapping[str, str], *, axes=None, xlabel: str = "PPO update",
                  title: str | None = None, colors: Mapping[str, str] | None = None):
    """Per-update logs of several runs, one panel per key: for each label, the mean over its seeds
    and the min-max band (chapter 4's PPO runs and beta sweep).

    ``runs`` maps a label to one History or its seeds' histories (as in :func:`learning_curves`);
    ``panels`` maps a logged key (``r_star``, ``kl/exact_per_sequence``, ``distinct_2``, ...) to
    its y label. Returns the axes.
    """
    runs = _runs(runs)
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError(f"panels must be a non-empty mapping {{logged key: y label}}, got {panels!r}")
    axes = _panels(axes, len(panels))
    for ax, (key, ylabel) in zip(axes, panels.items()):
        for i, (label, histories) in enumerate(runs.items()):
            curves = np.stack([h.update_array(key) for h in histories])
            steps = np.arange(1, curves.shape[1] + 1)
            color = (colors or {}).get(label, f"C{i}")
            seeds = f" ({len(histories)} seeds)" if len(histories) > 1 else ""
            ax.plot(steps, curves.mean(0), color=color, label=label + seeds)
            if len(histories) > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.25, lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].figure.suptitle(title or "mean over seeds, band from min to max")
    return axes


def adaptive_kl(history, target: float, *, ax=None, kl_key: str = "kl/exact_per_sequence"):
    """The adaptive KL controller at work (eq. rlhf-adaptive): the KL of each training batch against
    its target (left axis, nats) and the beta that batch was collected with (right axis).
    Returns (KL axes, beta axes)."""
    if not target > 0:
        raise ValueError(f"target must be > 0 (a KL in nats), got {target}")
    kl, beta = history.update_array(kl_key), history.update_array("beta")
    steps = np.arange(1, len(kl) + 1)
    ax = _axes(ax, (6.5, 3.6))
    ax.plot(steps, kl, color="C0", label=r"KL($\pi$ || $\pi_\mathrm{ref}$)")
    ax.axhline(target, color="C0", ls=":", label="KL target")
    ax.set_xlabel("PPO update")
    ax.set_ylabel("KL of the training batch [nats]")
    ax.set_ylim(0, 1.15 * max(kl.max(), target))
    twin = ax.twinx()
    twin.plot(steps, beta, color="C1", label=r"$\beta$")
    twin.set_ylabel(r"$\beta$", color="C1")
    twin.set_ylim(0, 1.25 * beta.max())
    handles = [h for a in (ax, twin) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", ncol=3, fontsize=8)
    ax.set_title("adaptive KL controller")
    return ax, twin


def reward_model_vs_truth(r_star, r_phi, *, ax=None, jitter: float = 0.08, seed: int = 0):
    """Reward model against the true reward on the same responses: a jittered scatter and the mean
    r_phi at each value of r* (chapter 4). Returns the axes."""
    r_star, r_phi = np.asarray(r_star, dtype=float), np.asarray(r_phi, dtype=float)
    if r_star.shape != r_phi.shape or r_star.ndim != 1 or len(r_star) < 2:
        raise ValueError(f"r_star and r_phi must be 1-D of equal length >= 2, got {r_star.shape} and {r_phi.shape}")
    ax = _axes(ax, (5.5, 4))
    noise = jitter * np.random.default_rng(seed).standard_normal(len(r_star))
    ax.scatter(r_star + noise, r_phi, s=6, alpha=0.4, label="held-out responses")
    for v in np.unique(r_star):
        ax.plot(v, r_phi[r_star == v].mean(), "k_", ms=18, mew=2)
    ax.plot([], [], "k_", ms=12, mew=2, label=r"mean $r_\phi$ per value of $r^*$")
    ax.set_xlabel(r"true reward $r^*(x, y)$ (jittered)")
    ax.set_ylabel(r"reward model $r_\phi(x, y)$")
    ax.set_title(rf"reward model against the truth (correlation {np.corrcoef(r_star, r_phi)[0, 1]:.2f})")
    ax.legend(fontsize=8)
    return ax


def centring_variance(results: Mapping, *, ax=None, b_range: tuple[float, float] = (-1.0, 4.0)):
    """The variance of the one-sample policy-gradient estimate against the constant b subtracted from
    the raw reward model (a parabola per seed), with the uncentred and the global offset's points
    and the per-prompt baseline's level (dotted). ``results`` maps a seed to
    ``rlnotes.post.centring_variance(...)``. Returns the axes."""
    if not isinstance(results, Mapping) or not results:
        raise TypeError("results must be a non-empty mapping {seed: post.centring_variance(...)}")
    ax = _axes(ax, (6.5, 3.8))
    b = np.linspace(*b_range, 201)
    for seed, c in results.items():
        a2, a1, a0 = c["constant_parabola"]
        line, = ax.plot(b, a2 * b ** 2 + a1 * b + a0, lw=1.2, label=f"seed {seed}: any constant b")
        ax.axhline(c["variance"]["per_prompt"], color=line.get_color(), ls=":", lw=1.2)
        ax.plot([0.0, c["offset"]], [c["variance"]["uncentred"], c["variance"]["global"]], "o",
                color=line.get_color())
    ax.axvline(next(iter(results.values()))["offset"], color="k", lw=0.8, ls="--",
               label="the global offset of normalize_")
    ax.plot([], [], "k:", lw=1.2, label="per-prompt baseline b(x) (dotted)")
    ax.set_xlabel("constant b subtracted from the raw reward model output")
    ax.set_ylabel("total variance of one sample's estimate")
    ax.set_ylim(bottom=0)
    ax.set_title(r"Centring $r_\phi$ is a baseline: it moves the variance, not the mean")
    ax.legend(fontsize=8)
    return ax
