"""Every static (matplotlib) figure of the book, so that a notebook cell reads as one call.

==============================  ==========  =========================================================
function                        chapter     what it draws
==============================  ==========  =========================================================
``learning_curves``             1-3         return against environment steps, mean over seeds, band
``kl_per_update``               1-3         KL(old || new) of every update, log axis in nats
``trpo_line_search``            2           the full step's KL and the step taken, against delta
``clip_plot_figure``            3           L^CLIP(r) for one sample (eq. 7), one panel
``paper_figure``                3           the PPO paper's Figure 1: the clip plot for A > 0 and A < 0
``passes_per_update``           3           what one update computes, TRPO against PPO
``ppo_one_batch``               3           many epochs on one batch, clipped or not
``batch_curves``                4           a supervised run's logs per mini-batch and moving mean
``update_curves``               4           per-update logs of several runs over seeds
``reward_model_vs_truth``       4           the reward model against the true reward
``adaptive_kl``                 4           the adaptive KL controller: KL, its target, beta
``centring_variance``           4           the gradient's variance against the reward's centring
``reward_kl_frontier``          4, 5        reward against KL to the reference policy
``pipeline_figure``             5           the DPO paper's Figure 1: RLHF's pipeline beside DPO's
``dpo_training``                5           DPO's training logs in four panels
``method_frontier``             6           every method on one reward-KL frontier, over seeds
``best_of_n_curves``            7           best-of-n's proxy and true reward against n
``overoptimisation``            7           r* and the proxy against sqrt(KL), best-of-n and RL, fits
``peak_by_reward_model``        7           best-of-n's r* for reward models fitted on less data
==============================  ==========  =========================================================

Each figure function takes ``ax=`` (one Axes, or a sequence of them for a figure of several
panels; a new figure otherwise), draws, labels the axes with their units and returns the axes
(``paper_figure`` and ``pipeline_figure`` make and return their own figure); the caller ends the
cell with ``plt.show()``. The functions live in ``control`` (chapters 1-3), ``language_models``
(chapters 4-6), ``overoptimisation`` (chapter 7) and ``papers`` (the papers' figures, redrawn); the interactive figures, which
respond to sliders in the static book too, are in ``rlnotes.widgets``.
"""

from .control import kl_per_update, learning_curves, passes_per_update, ppo_one_batch, trpo_line_search
from .language_models import (adaptive_kl, batch_curves, centring_variance, dpo_training, method_frontier,
                              reward_kl_frontier, reward_model_vs_truth, update_curves)
from .overoptimisation import best_of_n_curves, overoptimisation, peak_by_reward_model
from .papers import (CLIP, DPO_STEPS, FLAT, RATIO_ONE, RLHF_STEPS, UNCLIPPED, clip_plot_figure, figure_labels,
                     paper_figure, pipeline_figure)

# what the API page documents (each defined in one of the submodules above)
__all__ = ["learning_curves", "kl_per_update", "trpo_line_search", "clip_plot_figure", "paper_figure",
           "CLIP", "UNCLIPPED", "RATIO_ONE", "FLAT", "passes_per_update", "ppo_one_batch", "batch_curves",
           "update_curves", "reward_model_vs_truth", "adaptive_kl", "centring_variance", "reward_kl_frontier",
           "pipeline_figure", "RLHF_STEPS", "DPO_STEPS", "figure_labels", "dpo_training", "method_frontier",
           "best_of_n_curves", "overoptimisation", "peak_by_reward_model"]
