"""Two papers' figures, redrawn: the clip plot (PPO paper, Figure 1; chapter 3) and the RLHF pipeline
beside DPO's (DPO paper, Figure 1, the source post's DPO.png; chapter 5).

For one timestep, L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A) (eq. 7) as a function of
the ratio r. For A > 0 it is flat (zero gradient) for r > 1 + eps; for A < 0 it is flat for
r < 1 - eps (``rlnotes.widgets.flat_region``); elsewhere it equals the unclipped r A, whose slope is A.
``clip_plot_figure`` draws one panel (a pure function of eps and A) and ``paper_figure`` the
paper's two panels; ``rlnotes.widgets.clip_plot`` is the same figure with sliders.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ppo import clipped_surrogate
from ..utils import check_in_range, check_positive
from ..widgets import R_MAX, flat_region

# Labels of the plotted artists (legend entries; the tests find the artists by them).
CLIP, UNCLIPPED, RATIO_ONE, FLAT = "$L^{CLIP}$", "$rA$ (unclipped)", "$r = 1$", "flat: gradient 0"


def clip_plot_figure(eps: float, advantage: float, *, ax=None, r_max: float = R_MAX):
    """Draw L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A) (eq. 7) for one sample on ``ax``.

    A new figure is made if ``ax`` is None. Drawn: L^CLIP (label ``CLIP``), the unclipped line
    r A (dashed, ``UNCLIPPED``), the red dot at r = 1 where both equal A (``RATIO_ONE``), the
    shaded region where the gradient is zero (``FLAT``), dotted lines at 1 -+ eps, and the sign of
    the gradient on the sloped part. Returns ``ax``.
    """
    eps = check_positive("eps", eps)
    advantage = check_in_range("advantage", advantage, -1e6, 1e6)
    r_max = check_positive("r_max", r_max)
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    r = np.union1d(np.linspace(0.0, r_max, 401), [1.0 - eps, 1.0 + eps])  # exact corners
    r = r[(r >= 0) & (r <= r_max)]
    l_clip = clipped_surrogate(torch.as_tensor(r), torch.full((len(r),), advantage, dtype=torch.float64), eps).numpy()
    ax.plot(r, r * advantage, "--", color="0.55", lw=1.2, label=UNCLIPPED)
    ax.plot(r, l_clip, color="C0", lw=2.2, label=CLIP)
    flat = flat_region(eps, advantage, r_max)
    if flat is not None:
        ax.axvspan(*flat, color="C1", alpha=0.15, label=FLAT)
        level = (1.0 + eps) * advantage if advantage > 0 else (1.0 - eps) * advantage  # 0 when A = 0
        ax.text(0.5 * (flat[0] + flat[1]), level, "gradient 0", ha="center", va="bottom" if advantage >= 0 else "top",
                color="C1", fontsize=9)
    for edge in (1.0 - eps, 1.0 + eps):
        if 0 <= edge <= r_max:
            ax.axvline(edge, color="0.7", lw=0.8, ls=":")
    if advantage != 0:
        lo, hi = (0.0, min(1.0 + eps, r_max)) if advantage > 0 else (max(1.0 - eps, 0.0), r_max)
        x = lo + 0.3 * (hi - lo) if advantage > 0 else lo + 0.45 * (hi - lo)
        ax.text(x, advantage * x, f"  gradient {'+' if advantage > 0 else '-'}", ha="left",
                va="top" if advantage > 0 else "bottom", color="C0", fontsize=9)
    ax.plot([1.0], [advantage], "o", color="red", ms=7, zorder=5, label=RATIO_ONE)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlim(0.0, r_max)
    ax.set_xlabel("probability ratio $r$")
    ax.set_ylabel("$L^{CLIP}$ for one sample")
    sign = ">" if advantage > 0 else "<" if advantage < 0 else "="
    ax.set_title(f"$A {sign} 0$  ($A$ = {advantage:g}, $\\epsilon$ = {eps:g})")
    ax.legend(loc="upper left" if advantage >= 0 else "upper right", fontsize=8)
    return ax


def paper_figure(eps: float = 0.2):
    """Figure 1 of the PPO paper: L^CLIP against r for A = +1 (left) and A = -1 (right). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    clip_plot_figure(eps, 1.0, ax=axes[0])
    clip_plot_figure(eps, -1.0, ax=axes[1])
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the post's DPO.png, drawn

RLHF_STEPS = ("preference\ndata\n$x, y_w, y_l$", "reward\nmodel $r_\\phi$\n(max. likelihood)",
              "sample\ncompletions\n$y \\sim \\pi_\\theta(\\cdot\\mid x)$",
              "reinforcement\nlearning (PPO)\nKL to $\\pi_{ref}$", "final LM\n$\\pi_\\theta$")
DPO_STEPS = ("preference\ndata\n$x, y_w, y_l$", "maximum\nlikelihood\n$\\mathcal{L}_{DPO}$", "final LM\n$\\pi_\\theta$")


def pipeline_figure(figsize=(10.5, 2.9)):
    """The RLHF pipeline (preference data -> reward model -> sampling -> RL -> LM) beside DPO's
    (preference data -> maximum likelihood -> LM): Figure 1 of the DPO paper, the post's DPO.png.

    The loop between sampling and RL (the policy samples the data it is trained on) is drawn as a
    curved arrow; DPO has none. Returns the matplotlib figure (two axes, titled "RLHF (PPO)" and
    "DPO"); its text labels are ``RLHF_STEPS`` and ``DPO_STEPS``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, axes = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [5, 3]})
    for ax, steps, title, color in ((axes[0], RLHF_STEPS, "RLHF (PPO)", "#f4d6a0"),
                                    (axes[1], DPO_STEPS, "DPO", "#bfe3c0")):
        n = len(steps)
        ax.set_xlim(0, 2 * n)
        ax.set_ylim(0.7, 3.1)
        ax.axis("off")
        ax.set_title(title, fontsize=12, fontweight="bold")
        for i, label in enumerate(steps):
            x = 2 * i + 0.15
            ax.add_patch(FancyBboxPatch((x, 0.9), 1.7, 1.2, boxstyle="round,pad=0.02,rounding_size=0.15",
                                        facecolor=color, edgecolor="k", lw=1))
            ax.text(x + 0.85, 1.5, label, ha="center", va="center", fontsize=8.5, linespacing=1.4)
            if i < n - 1:
                ax.add_patch(FancyArrowPatch((x + 1.72, 1.5), (x + 2.13, 1.5), arrowstyle="-|>",
                                             mutation_scale=12, lw=1.2))
        if title.startswith("RLHF"):   # the RL loop: the policy generates its own training data
            ax.add_patch(FancyArrowPatch((2 * 3 + 1.0, 2.12), (2 * 2 + 1.0, 2.12), connectionstyle="arc3,rad=0.6",
                                         arrowstyle="-|>", mutation_scale=12, lw=1.2, color="C3"))
            ax.text(2 * 3, 2.8, "the policy samples its own training data", ha="center", va="center", fontsize=8,
                    color="C3")
    fig.tight_layout()
    return fig


def figure_labels(fig) -> list[str]:
    """The text of every label drawn on ``fig``'s axes, in order (what the unit test checks)."""
    return [t.get_text() for ax in fig.axes for t in ax.texts]

