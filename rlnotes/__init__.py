"""rlnotes: the package behind the book *RL for language models, from the policy gradient to DPO*.

One module per idea, in the order of the book:

module              chapter
===================  ==========================================================
module               chapter
===================  ==========================================================
``trainer``          all: the contract every trainer follows (``History``, ``TrainResult``, configs)
``kl``               all: the exact KL and the k1, k2, k3 estimators
``bandits``          1, 2: softmax bandits with exact gradients and Fisher matrix
``mdp``              1: a tiny tabular MDP with exact J(theta), V, Q; REINFORCE on it; reward-to-go, n-step advantages
``returns``          1-4: discounted returns, GAE and advantage normalisation
``nets``             1-3: categorical policy and value networks, the value loss
``rollout``          1-3: vectorised gymnasium rollouts, the control trainers' shared configuration
``pg``               1: the score-function estimator and L^PG
``trpo``             2: conjugate gradient, Fisher-vector products, line search
``ppo``              3: the ratio r_t and L^CLIP
``actor_critic``     3: PPO's speed engineering (packed networks, foreach kernels)
``cost``             3, 5: what one update computes, TRPO against PPO, RLHF-PPO against DPO
``widgets``          1-5: the interactive figures
``sentiment``        4-6: the toy sentiment task, its true reward r*, its tokenizer, distinct-n
``models``           4-6: causal LMs built (tiny GPT-2), loaded and saved; bf16 autocast
``lm``               4-6: encoding, log-probabilities, each prompt run once for k responses
``sampling``         4-6: batched, seeded sampling with the KV cache
``kvcache``          4-6: the KV cache, fencing off transformers' cache internals
``sft``              4: phase 1, supervised fine-tuning
``reward``           4: phase 2, Bradley-Terry preferences and the reward model; checks of any reward's scores
``prepare``          4-6: phases 1 and 2 in one seeded call, the ``Prepared`` every LM chapter starts from
``rlhf``             4: phase 3, KL-regularised PPO over tokens
``measure``          4-6: a policy on held-out prompts (r*, r_phi, KL to pi_ref), the KL estimators
``pairs``            5, 6: preference pairs and their log-probabilities
``dpo``              5, 6: the DPO and IPO losses, one trainer for both
``dpo_closed_form``  5: the optimal policy, log Z, DPO on a one-token model
``dpo_vs_ppo``       5: the reward-KL frontier of DPO against RLHF-PPO, over seeds
``groups``           6: groups of samples for RLOO and GRPO, when a scoring pass serves the update
``rloo``             6: leave-one-out baselines, the exact bias of group baselines, RLOO
``grpo``             6: group advantages, GRPO's loss and its normalisations
``ipo``              6: IPO against DPO on a one-token model, DPO's unbounded margin
``bestofn``          7: best-of-n, its KL to pi_ref, over-optimisation's functional forms
``frontier``         6: the reward-KL frontier of every method
``post``             all: the source post's claims, checked
``plots``            all: every static (matplotlib) figure
``seeds``            1-3: the seeds of one setting, run on every core
``parallel``         all: the one pool of worker processes (one torch thread per job), the cores
``stats``            all: standard errors, bootstrap intervals, IQM over seeds and samples
``exercises``        1-6: the build-it exercises' checks, the reader's function against rlnotes'
``utils``            all: seeding, device selection, argument checks
===================  ==========================================================

Importing rlnotes changes nothing global (no thread count, no random seed): the book's set-up
cell chooses one torch thread itself, and each trainer draws from generators of its own.
"""

__version__ = "0.1.0"


def _version_key(version: str, name: str) -> tuple:
    """``"0.1"`` -> ``((0, 1, 0, ...), "")``: numeric parts padded with zeros, then any suffix."""
    import re

    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(.*)", version.strip())
    if match is None:
        raise ValueError(f"{name} must be a version such as '{__version__}', got {version!r}")
    parts = tuple(int(p) for p in match.group(1).split("."))
    return parts + (0,) * (8 - len(parts)), match.group(2)


def check_version(built_with: str) -> None:
    """Warn when the imported rlnotes is not the version a page was built with.

    Each chapter's first cell calls this, so a notebook opened against an older or newer
    package says so at once, instead of failing later on a function that moved. Versions are
    compared by their numeric parts, so ``"0.1"`` is ``"0.1.0"``.
    """
    if not isinstance(built_with, str):
        raise TypeError(f"built_with must be a version string such as '{__version__}', "
                        f"got {type(built_with).__name__} {built_with!r}")
    if _version_key(built_with, "built_with") != _version_key(__version__, "rlnotes.__version__"):
        import warnings

        warnings.warn(f"this page was built with rlnotes {built_with}, but rlnotes {__version__} is "
                      f"imported: install the matching version (pip install rlnotes=={built_with}, "
                      f"or the repository at tag v{built_with.strip().lstrip('v')})", stacklevel=2)
