"""rlnotes: the package behind the book *RL for language models, from the policy gradient to DPO*.

One module per idea, in the order of the book:

=============  ==========================================================
module         chapter
=============  ==========================================================
``bandits``    1, 2: softmax bandits with exact gradients and Fisher matrix
``returns``    1-4: discounted returns and GAE
``nets``       1-3: categorical policy and value networks
``rollout``    1-3: vectorised gymnasium rollouts and ``History``
``pg``         1: the score-function estimator and L^PG
``trpo``       2: conjugate gradient, Fisher-vector products, line search
``ppo``        3: the ratio r_t and L^CLIP
``widgets``    1-5: one interactive figure per chapter; the clip plot
``lm``         4, 5: a small causal LM, its tokenizer and the toy task
``rlhf``       4: SFT, Bradley-Terry reward model, KL-regularised PPO
``dpo``        5: the optimal policy, log Z and the DPO loss
=============  ==========================================================
"""

__version__ = "0.1.0"


def check_version(built_with: str) -> None:
    """Warn when the imported rlnotes is not the version a page was built with.

    Each chapter's first cell calls this, so a notebook opened against an older or newer
    package says so at once, instead of failing later on a function that moved.
    """
    if built_with != __version__:
        import warnings

        warnings.warn(f"this page was built with rlnotes {built_with}, but rlnotes {__version__} is "
                      f"imported: install the matching version (pip install rlnotes=={built_with}, "
                      "or the repository at tag v" + built_with + ")", stacklevel=2)

import os as _os

import torch as _torch

# rlnotes' networks are tiny: one CPU thread runs them as fast as several, repeats bit for bit
# on any machine, and does not stall when other processes share the cores (measured on 2 busy
# cores: 2.5 s with one thread against 39 s with two for the same 10k CartPole steps).
# Set RLNOTES_NUM_THREADS to use more, for example for a larger model on a many-core CPU.
_torch.set_num_threads(int(_os.environ.get("RLNOTES_NUM_THREADS", "1")))
