"""The book's interactive figures, one per chapter (``rlnotes.widgets.interactive``), which respond
in the static book too; the static (matplotlib) figures are in ``rlnotes.plots``.

Interactive (ipywidgets, drawn in the browser; each returns an ``Explorer``, sliders above the figure):

==================================  ==========  ===================================================
function                            chapter     what moves
==================================  ==========  ===================================================
``score_function_estimates``        1           n and the baseline: estimates of grad J around it
``trust_region_step``               2           delta: the KL ball, the natural and TRPO steps
``clip_plot``                       3           eps and A: L^CLIP(r) (PPO paper, Figure 1)
``kl_regularised_optimum``          4           beta: pi_beta, its reward, KL and entropy
``dpo_gradient_weight``             5           beta and the log-ratios: the DPO gradient weight
``best_of_n``                       7           n: pi_bon, its KL, its expected proxy and true rewards
==================================  ==========  ===================================================

For one timestep, L^CLIP(r) = min(r A, clip(r, 1 - eps, 1 + eps) A) (eq. 7) as a function of
the ratio r. For A > 0 it is flat (zero gradient) for r > 1 + eps; for A < 0 it is flat for
r < 1 - eps; elsewhere it equals the unclipped r A, whose slope is A. ``flat_region`` says where,
for the clip plot here (``clip_plot``, whose browser code mirrors it) and for its static panels
(``rlnotes.plots.clip_plot_figure``).
"""

from __future__ import annotations

import numpy as np

from ..utils import check_in_range, check_positive
from .interactive import (BestOfN, ClipPlot, DPOGradientWeight, Explorer, KLRegularisedOptimum, ScoreFunctionEstimates,
                          TrustRegionStep, clip_plot, dpo_gradient_weight, kl_regularised_optimum,
                          best_of_n, score_function_estimates, trust_region_step)

# what the API page documents (the interactive figures are defined in .interactive)
__all__ = ["R_MAX", "flat_region", "score_function_estimates", "ScoreFunctionEstimates", "trust_region_step",
           "TrustRegionStep", "clip_plot", "ClipPlot", "kl_regularised_optimum", "KLRegularisedOptimum",
           "dpo_gradient_weight", "DPOGradientWeight", "best_of_n", "BestOfN",
           "Explorer"]

R_MAX = 2.0  # the clip plots show r in [0, R_MAX]


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
