"""Chapter 6: Identity Preference Optimisation (IPO; Azar et al. 2023, "A General Theoretical
Paradigm to Understand Learning from Human Preferences", eq. 17), on a one-token model.

DPO's loss -log sigma(beta h), with the log-ratio margin

    h = log(pi(y_w|x) / pi_ref(y_w|x)) - log(pi(y_l|x) / pi_ref(y_l|x)),

keeps falling as h grows: on a pair whose preference is (near-)deterministic its minimum lies at
h = +inf, so the implicit reward margin beta h grows without bound and the policy leaves pi_ref
however large beta is. IPO replaces it by a squared error with a finite target,

    L_IPO = E[(h - 1/(2 beta))^2]                                               (eq. ipo-loss)

(``rlnotes.dpo.ipo_loss``, beside ``dpo_loss``): each pair is pulled to the margin 1/(2 beta), an
implicit-reward margin beta h = 1/2, and no further. ``fit_bandit`` shows both on a one-token model,
solved exactly; on a language model IPO is ``rlnotes.dpo.train(..., loss_type="ipo")`` (TRL's
``DPOConfig(loss_type="ipo")``), whose ``length_normalize=True`` uses TRL's mean log-probability per
token instead of the paper's sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dpo
from .dpo_closed_form import check_token_pairs
from .kl import exact_kl
from .trainer import History, check_count
from .utils import check_choice, check_positive, check_positive_int

LOSSES = {"dpo": dpo.dpo_loss, "ipo": dpo.ipo_loss}


# ------------------------------------------------------------ a one-token model, solved exactly

MAX_BANDIT_STEPS = 20_000
"""The most ``steps`` ``fit_bandit`` takes (the default is 3000, the book runs 2000); 20_000 take about 10 s."""


def fit_bandit(loss: str, ref_probs, winners, losers, beta: float, *, steps: int = 3000, lr: float = 0.05,
               log_every: int = 100) -> History:
    """Minimise the DPO or IPO loss of a one-token "language model" pi = softmax(theta) over K responses.

    The data are the pairs (y_w = ``winners[i]``, y_l = ``losers[i]``), every one labelled the
    same way every time (a deterministic preference); pi starts at ``ref_probs``. Adam on theta
    at ``lr``; every ``log_every`` steps logs ``step``, ``loss``, ``margin`` (mean log-ratio
    margin h over the pairs) and ``kl/exact_per_state`` (exact KL(pi || pi_ref), >= 0).
    ``ref_probs`` must be a distribution over K >= 2 tokens, every entry > 0, summing to 1 within
    1e-6 (float32 input allowed); ``winners`` and ``losers`` integer tokens in [0, K)
    (``dpo_closed_form.check_token_pairs``); ``ValueError`` otherwise, and for ``steps`` above
    ``MAX_BANDIT_STEPS``.
    """
    loss_fn = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    check_token_pairs(ref_probs, winners, losers, atol=1e-6)
    beta, lr = check_positive("beta", beta), check_positive("lr", lr)
    steps = check_count("steps", steps, MAX_BANDIT_STEPS, "MAX_BANDIT_STEPS")
    log_every = check_positive_int("log_every", log_every)
    ref_logp = torch.log(torch.as_tensor(ref_probs, dtype=torch.float64))
    # pi_ref as a normalised log-distribution, for the KL: ref_probs sums to 1 only up to rounding
    # (float32 [0.4, 0.3, 0.2, 0.1] sums to 1 + 2.2e-8), and KL(pi || ref_probs / s) = KL(pi || pi_ref) - log s
    # would go below 0 near pi = pi_ref. The loss only sees log-ratio differences, where log s cancels.
    ref_logq = F.log_softmax(ref_logp, -1)
    winners, losers = torch.as_tensor(winners), torch.as_tensor(losers)
    theta = ref_logp.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    history = History()
    for step in range(1, steps + 1):
        logp = F.log_softmax(theta, -1)
        losses, c, r = loss_fn(logp[winners], logp[losers], ref_logp[winners], ref_logp[losers], beta)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
        if step % log_every == 0:
            with torch.no_grad():
                logp = F.log_softmax(theta, -1)
                h = (logp[winners] - ref_logp[winners]) - (logp[losers] - ref_logp[losers])
                history.log({"step": step, "loss": losses.mean(), "margin": h.mean(), "kl/exact_per_state": exact_kl(logp, ref_logq)})
    return history
