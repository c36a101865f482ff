"""The figures of the language-model chapters (4-6): supervised and PPO runs, the reward model, the
reward-KL frontiers and DPO's training logs.

- :func:`batch_curves`: a supervised run's logs per mini-batch with their moving mean (chapter 4);
- :func:`update_curves`: per-update logs of several runs, mean over seeds and band (chapter 4);
- :func:`adaptive_kl`: the adaptive KL controller, KL against its target and beta (chapter 4);
- :func:`reward_model_vs_truth`: the reward model against the true reward (chapter 4);
- :func:`centring_variance`: the variance of the gradient estimate against the reward's centring (chapter 4);
- :func:`reward_kl_frontier`: reward against KL to the reference policy (chapters 4-5);
- :func:`dpo_training`: DPO's training logs in four panels (chapter 5);
- :func:`method_frontier`: every method of the book on one reward-KL frontier (chapter 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..frontier import METHODS, summarize
from .base import as_runs, moving_mean, new_axes, panel_axes


def batch_curves(history, panels: Mapping[str, str], *, smooth: int = 10,
                 lines: Mapping[str, Sequence[tuple[float, str]]] | None = None, ax=None,
                 xlabel: str = "step (mini-batch)", title: str | None = None):
    r"""A supervised run's logs, one panel per key: the value of every mini-batch (faint) and its
    moving mean over ``smooth`` batches (chapter 4's SFT and reward model).

    ``history`` is a ``TrainResult.history``; ``panels`` maps a logged key to its y label;
    ``lines`` maps a key to dotted reference levels ``[(value, label), ...]`` drawn in its panel
    ($\log |V|$ for the SFT loss, $\log 2$ and chance for the reward model). ``ax``: one axes per panel
    (a new row of panels otherwise). Returns the axes.
    """
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError(f"panels must be a non-empty mapping {{logged key: y label}}, got {panels!r}")
    values = {key: history.update_array(key) for key in panels}
    n = len(next(iter(values.values())))
    if not (isinstance(smooth, int) and 1 <= smooth <= n):
        raise ValueError(f"smooth must be an int in [1, {n}] (the steps logged), got {smooth!r}")
    axes = panel_axes(ax, len(panels))
    steps = np.arange(1, n + 1)
    for ax, (key, label) in zip(axes, panels.items()):
        line, = ax.plot(steps, values[key], lw=0.8, alpha=0.35, label="per mini-batch")
        ax.plot(steps[smooth - 1:], moving_mean(values[key], smooth), color=line.get_color(),
                label=f"moving mean of {smooth}")
        for k, (value, ref) in enumerate((lines or {}).get(key, ())):
            ax.axhline(value, color="k", ls=[":", "--", "-."][k % 3], lw=1, label=ref)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def update_curves(runs, panels: Mapping[str, str], *, ax=None, xlabel: str = "PPO update",
                  title: str | None = None, colors: Mapping[str, str] | None = None):
    """Per-update logs of several runs, one panel per key: for each label, the mean over its seeds
    and the min-max band (chapter 4's PPO runs and beta sweep).

    ``runs`` maps a label to one History or its seeds' histories (as in :func:`learning_curves`);
    ``panels`` maps a logged key (``r_star``, ``kl/exact_per_sequence``, ``distinct_2``, ...) to
    its y label. ``ax``: one axes per panel (a new row of panels otherwise). Returns the axes.
    """
    runs = as_runs(runs)
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError(f"panels must be a non-empty mapping {{logged key: y label}}, got {panels!r}")
    axes = panel_axes(ax, len(panels))
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
    ax = new_axes(ax, (6.5, 3.6))
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
    ax = new_axes(ax, (5.5, 4))
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
    ax = new_axes(ax, (6.5, 3.8))
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


def _check_points(points) -> list:
    """``reward_kl_frontier``'s points as ``[(name, metrics)]``; ``TypeError`` naming ``points`` otherwise."""
    if isinstance(points, (str, bytes)) or not hasattr(points, "__iter__"):
        raise TypeError(f"points must be a sequence of (name, metrics) pairs, got {type(points).__name__}")
    points = list(points)
    for i, p in enumerate(points):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[1], Mapping)):
            raise TypeError(f"points[{i}] must be a (name, metrics) pair, metrics a dict, got {p!r:.60}")
    return [(str(n), m) for n, m in points]


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
    points = _check_points(points)
    if not points:
        raise ValueError("points must hold at least one (name, metrics) pair")
    for name, metrics in points:
        missing = [k for k in [kl_key, *rewards] if k not in metrics]
        if missing:
            raise ValueError(f"points: the metrics of {name!r} lack {missing}")
    points.sort(key=lambda p: p[1][kl_key])
    ax = new_axes(ax, (6, 3.8))
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


def dpo_training(history, *, reference_accuracy: float | None = None, smooth: int = 6, ax=None):
    """DPO's training logs in four panels, one quantity per axis (chapter 5).

    ``history`` is ``rlnotes.dpo.train(...).history`` (or a dict of its logs) with TRL's keys:
    the loss per batch and held-out (against log 2, the loss at the start); the implicit rewards
    of chosen and rejected responses and their margin; the log-probabilities of both; the
    preference accuracy on training batches and held out (against ``reference_accuracy``, e.g.
    the reward model's), with the true reward of held-out samples on a second axis where it was
    logged (``eval/r_star``). Batch-level curves are moving means over ``smooth`` batches.
    ``ax``: the 2 x 2 axes to draw on (a new figure otherwise). Returns the 2 x 2 axes.
    """
    logged = {**history.updates, **history.evals} if hasattr(history, "evals") else history
    u = {k: np.asarray(v, dtype=float) for k, v in logged.items()}
    needed = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
              "logps/rejected", "rewards/accuracies"]
    missing = [k for k in needed if k not in u]
    if missing:
        raise ValueError(f"history lacks the DPO log keys {missing}")
    if not (isinstance(smooth, int) and 1 <= smooth <= len(u["loss"])):
        raise ValueError(f"smooth must be an int in [1, {len(u['loss'])}], got {smooth!r}")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(2, 2, figsize=(10, 6.5))[1]
    steps = np.arange(1, len(u["loss"]) + 1)
    s_steps = steps[smooth - 1:]
    held_out = "eval/step" in u
    (loss, rew), (logp, acc) = axes = ax
    loss.plot(steps, u["loss"], alpha=0.35, label="train loss (per batch)")
    if held_out:
        loss.plot(u["eval/step"], u["eval/loss"], "o-", label="held-out loss")
    loss.axhline(np.log(2), color="k", ls="--", lw=1, label="log 2")
    loss.set_ylabel("DPO loss")
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins"]:
        rew.plot(s_steps, moving_mean(u[key], smooth), label=key)
    rew.axhline(0, color="k", lw=0.8)
    rew.set_ylabel("implicit reward\n" r"$\beta\log\pi_\theta/\pi_\mathrm{ref}$ (moving mean)")
    for key in ["logps/chosen", "logps/rejected"]:
        logp.plot(s_steps, moving_mean(u[key], smooth), label=key)
    logp.set_ylabel(r"$\log\pi_\theta(y\mid x)$ [nats] (moving mean)")
    acc.plot(s_steps, moving_mean(u["rewards/accuracies"], smooth), label="train accuracy (moving mean)")
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


def method_frontier(rows: list[dict], sft_r_star: float, *, ax=None, spread: str = "se", panels=None):
    """Every method on one reward-KL frontier (chapter 6): mean r* against mean KL per (method, beta)
    of ``rlnotes.frontier.sweep``'s rows (summarised by ``rlnotes.frontier.summarize``), with error
    bars of two standard errors of the mean over seeds (``spread="se"``: about a 95% interval), one
    std over seeds (``"std"``), or from the lowest to the highest seed (``"range"``); the seeds
    themselves as faint points; pi_ref at KL 0. ``panels`` ({title: [methods]}): one panel per group
    of methods, side by side with one y axis (methods that learn from different signals apart);
    ``ax`` then holds one Axes per panel. Returns the axes (a list of them with ``panels``)."""
    if spread not in ("se", "std", "range"):
        raise ValueError(f"spread must be 'se', 'std' or 'range', got {spread!r}")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    if panels is None:
        ax = new_axes(ax, (7.5, 4.8))
        _frontier_panel(ax, rows, sft_r_star, spread, colors)
        return ax
    axes = panel_axes(ax, len(panels))
    for a, (title, group) in zip(axes, panels.items()):
        _frontier_panel(a, [r for r in rows if r["method"] in group], sft_r_star, spread, colors)
        a.set_title(title, fontsize=10)
    for a in axes[1:]:
        a.set_ylabel("")
        a.sharey(axes[0])
    return axes


def _frontier_panel(ax, rows, sft_r_star, spread, colors):
    markers = dict(zip(METHODS, "^osDv"))
    for method in dict.fromkeys(r["method"] for r in rows):
        color = colors[method]
        runs = [r for r in rows if r["method"] == method]
        ax.scatter([r["kl"] for r in runs], [r["r_star"] for r in runs], color=color, alpha=0.25, s=12)
        stats = sorted((s for s in summarize(runs)), key=lambda s: s["kl"])
        if spread == "range":
            xerr = [[s["kl"] - s["kl_min"] for s in stats], [s["kl_max"] - s["kl"] for s in stats]]
            yerr = [[s["r_star"] - s["r_star_min"] for s in stats], [s["r_star_max"] - s["r_star"] for s in stats]]
        else:
            scale, key = (2.0, "_se") if spread == "se" else (1.0, "_std")
            xerr = [scale * np.nan_to_num(s["kl" + key]) for s in stats]
            yerr = [scale * np.nan_to_num(s["r_star" + key]) for s in stats]
        ax.errorbar([s["kl"] for s in stats], [s["r_star"] for s in stats], xerr=xerr,
                    yerr=yerr, color=color, marker=markers.get(method, "o"),
                    capsize=3, label=method)
    ax.scatter([0], [sft_r_star], color="k", marker="s", label=r"$\pi_{ref}$")
    ax.set_xlabel(r"KL$[\pi\,\|\,\pi_{ref}]$ per response (nats)")
    ax.set_ylabel(r"mean true reward $r^*$ (held-out prompts)")
    ax.legend(fontsize=8)
