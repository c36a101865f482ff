"""The book's figures: chapter 3's clip plot as static matplotlib figures, and one interactive
figure per chapter (``rlnotes.widgets.interactive``), which responds in the static book too.

Interactive (ipywidgets, drawn in the browser; each returns an ``Explorer``, sliders above the figure):

==================================  ==========  ===================================================
function                            chapter     what moves
==================================  ==========  ===================================================
``score_function_estimates``        1           n and the baseline: estimates of grad J around it
``trust_region_step``               2           delta: the KL ball, the natural and TRPO steps
``clip_plot``                       3           eps and A: L^CLIP(r) (PPO paper, Figure 1)
``kl_regularised_optimum``          4           beta: pi_beta, its reward, KL and entropy
``dpo_gradient_weight``             5           beta and the log-ratios: the DPO gradient weight
==================================  ==========  ===================================================

Static, chapter 3: the clip plot, Figure 1 of the PPO paper.

For one timestep, L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A) (eq. 7) as a function of
the ratio r. For A > 0 it is flat (zero gradient) for r > 1 + eps; for A < 0 it is flat for
r < 1 - eps; elsewhere it equals the unclipped r A, whose slope is A.

``clip_plot_figure`` draws one panel (a pure function of eps and A) and ``paper_figure`` the
paper's two panels.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ppo import clipped_surrogate
from ..utils import check_in_range, check_positive
from .interactive import (ClipPlot, DPOGradientWeight, Explorer, KLRegularisedOptimum, ScoreFunctionEstimates,
                          TrustRegionStep, clip_plot, dpo_gradient_weight, kl_regularised_optimum,
                          score_function_estimates, trust_region_step)

# what the API page documents (the interactive figures are defined in .interactive)
__all__ = ["flat_region", "clip_plot_figure", "paper_figure", "CLIP", "UNCLIPPED", "RATIO_ONE", "FLAT",
           "score_function_estimates", "ScoreFunctionEstimates", "trust_region_step", "TrustRegionStep",
           "clip_plot", "ClipPlot", "kl_regularised_optimum", "KLRegularisedOptimum",
           "dpo_gradient_weight", "DPOGradientWeight", "Explorer"]

R_MAX = 2.0  # the plots show r in [0, R_MAX]


def flat_region(eps: float, advantage: float, r_max: float = R_MAX) -> tuple[float, float] | None:
    """The interval of r in [0, r_max] where L^CLIP is flat (d L^CLIP / d r = 0), or None.

    A > 0: (1 + eps, r_max); A < 0: (0, 1 - eps), empty if eps >= 1; A = 0: all of [0, r_max].
    ``eps`` and ``r_max`` must be finite and > 0, ``advantage`` finite (``ValueError`` otherwise).
    """
    eps = check_positive("eps", eps)
    advantage = check_in_range("advantage", advantage, -np.inf, np.inf)
    r_max = check_positive("r_max", r_max)
    if advantage > 0:
        return (1.0 + eps, r_max) if 1.0 + eps < r_max else None
    if advantage < 0:
        return (0.0, 1.0 - eps) if eps < 1.0 else None
    return (0.0, r_max)


# Labels of the plotted artists (legend entries; the tests find the artists by them).
CLIP, UNCLIPPED, RATIO_ONE, FLAT = "$L^{CLIP}$", "$rA$ (unclipped)", "$r = 1$", "flat: gradient 0"


def clip_plot_figure(eps: float, advantage: float, ax=None, r_max: float = R_MAX):
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
