"""Chapter 6: Identity Preference Optimisation (IPO; Azar et al. 2023, "A General Theoretical
Paradigm to Understand Learning from Human Preferences", eq. 17).

DPO's loss -log sigma(beta h), with the log-ratio margin

    h = log(pi(y_w|x) / pi_ref(y_w|x)) - log(pi(y_l|x) / pi_ref(y_l|x)),

keeps falling as h grows: on a pair whose preference is (near-)deterministic its minimum lies at
h = +inf, so the implicit reward margin beta h grows without bound and the policy leaves pi_ref
however large beta is. IPO replaces it by a squared error with a finite target,

    L_IPO = E[(h - 1/(2 beta))^2]                                               (eq. ipo-loss)

(``ipo_loss``): each pair is pulled to the margin 1/(2 beta), an implicit-reward margin
beta h = 1/2, and no further. Here the log-probabilities are sums over the response tokens, as in
the paper and in DPO; TRL's ``DPOConfig(loss_type="ipo")`` uses their mean per token instead
(``length_normalize=True`` in ``train`` does the same).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import dpo
from .kl import exact_kl
from .sft import check_model, kept_as_found
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, make_config, progress, rng_scope,
                      run_guard)
from .utils import check_choice, check_positive, check_positive_int, check_seed


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    """Per-pair IPO losses (h - 1/(2 beta))^2 (eq. ipo-loss) and the implicit rewards beta log(pi / pi_ref).

    Same arguments and returns as ``rlnotes.dpo.dpo_loss``: ``(losses, chosen_rewards,
    rejected_rewards)``, the rewards detached.
    """
    beta = dpo.check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen.detach(), beta * rejected.detach()


LOSSES = {"dpo": dpo.dpo_loss, "ipo": ipo_loss}


# ------------------------------------------------------------ a one-token model, solved exactly

def fit_bandit(loss: str, ref_probs, winners, losers, beta: float, *, steps: int = 3000, lr: float = 0.05,
               log_every: int = 100) -> History:
    """Minimise the DPO or IPO loss of a one-token "language model" pi = softmax(theta) over K responses.

    The data are the pairs (y_w = ``winners[i]``, y_l = ``losers[i]``), every one labelled the
    same way every time (a deterministic preference); pi starts at ``ref_probs``. Adam on theta
    at ``lr``; every ``log_every`` steps logs ``step``, ``loss``, ``margin`` (mean log-ratio
    margin h over the pairs) and ``kl/exact_per_state`` (exact KL(pi || pi_ref), >= 0).
    ``ref_probs`` must be a distribution over K >= 2 tokens, every entry > 0, summing to 1 within
    1e-6 (float32 input allowed); ``winners`` and ``losers`` integer tokens in [0, K)
    (``rlnotes.dpo.check_token_pairs``); ``ValueError`` otherwise.
    """
    loss_fn = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    dpo.check_token_pairs(ref_probs, winners, losers, atol=1e-6)
    beta, lr = check_positive("beta", beta), check_positive("lr", lr)
    steps, log_every = check_positive_int("steps", steps), check_positive_int("log_every", log_every)
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


# ------------------------------------------------------------------------------- the trainer

@dataclass(frozen=True, kw_only=True)
class IPOConfig(Config):
    """IPO: ``epochs`` passes over the pairs in minibatches of ``batch_size``, AdamW (no weight
    decay) at ``lr``, ``beta`` (the target margin is 1/(2 beta)), gradient-norm clipping
    ``max_grad_norm`` (None: none), ``length_normalize`` (mean log-probability per token, as
    TRL's IPO), ``seed``, ``progress``."""

    seed: int = 0
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-4
    beta: float = 0.1
    max_grad_norm: float | None = 1.0
    length_normalize: bool = False
    progress: bool = False

    def __post_init__(self):
        self.check("seed", check_seed)
        self.check("epochs", check_positive_int)
        self.check("batch_size", check_positive_int)
        self.check("lr", check_positive)
        self.check("beta", check_positive)
        self.check("max_grad_norm", check_positive)
        self.check("length_normalize", check_bool)
        self.check("progress", check_bool)


def _logps(model, batch, length_normalize):
    c, r = dpo.pair_logps(model, batch)
    if length_normalize:
        c, r = c / batch["chosen_mask"].sum(1), r / batch["rejected_mask"].sum(1)
    return c, r


@torch.no_grad()
def _all_logps(model, data, length_normalize, batch_size=512):
    n = len(data["prompt_ids"])
    parts = [_logps(model, dpo.trim_pairs(data, slice(s, s + batch_size)), length_normalize)
             for s in range(0, n, batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def train(ref, data: dict, eval_data: dict | None = None, config: IPOConfig | None = None, *, callback=None,
          **kwargs) -> TrainResult:
    """IPO (eq. ipo-loss) for a causal LM from a trainable copy of the frozen reference ``ref``.

    ``data`` / ``eval_data`` are the preference tensors of ``rlnotes.reward.Preferences.encode``,
    as for ``rlnotes.dpo.train`` (``rlnotes.dpo.check_pairs``); the reference's log-probabilities
    are computed once, in eval mode, and ``ref`` is handed back as it came (requires_grad flags,
    train/eval modes). Logs per step, under TRL's names: ``loss``, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
    ``logps/rejected``, ``seconds``; with ``eval_data``, after each epoch ``eval/epoch``,
    ``eval/loss`` and ``eval/margin`` (the mean log-ratio margin h). ``callback(policy)``, if given,
    is called before training and after each epoch, with the policy in eval mode; it returns None
    (nothing to log) or a dict of numbers, logged as ``eval/<name>`` with ``eval/epoch``
    (``rlnotes.dpo.callback_metrics``: e.g. the true reward and KL of samples). Returns a
    ``TrainResult`` whose model is the copy, in eval mode; an interrupt, from the reference pass on,
    raises ``TrainingInterrupted`` with the result so far. Refused: a ``ref`` with float16
    parameters (``TypeError``: its copy is trained; allowed are float32, float64 and bfloat16).
    """
    cfg = make_config(IPOConfig, config, **kwargs)
    n = dpo.check_pairs(data)
    if eval_data is not None:
        dpo.check_pairs(eval_data, "eval_data")
    dpo.check_callback(callback)
    check_model("ref", ref, trained=True)
    history = History()
    with kept_as_found(ref), rng_scope(cfg.seed):
        policy = copy.deepcopy(ref).requires_grad_(True).train()
        result = TrainResult(policy, history, cfg)
        with run_guard(lambda: result, policy.eval):
            ref.eval()
            ref_c, ref_r = _all_logps(ref, data, cfg.length_normalize)
            eval_ref = None if eval_data is None else _all_logps(ref, eval_data, cfg.length_normalize)
            opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
            order_gen = torch.Generator().manual_seed(cfg.seed)

            def evaluate(epoch):
                logged = {"eval/epoch": epoch}
                policy.eval()
                if eval_data is not None:
                    pc, pr = _all_logps(policy, eval_data, cfg.length_normalize)
                    h = (pc - eval_ref[0]) - (pr - eval_ref[1])
                    logged.update({"eval/loss": ipo_loss(pc, pr, *eval_ref, cfg.beta)[0].mean(),
                                   "eval/margin": h.mean()})
                if callback is not None:
                    logged.update(dpo.callback_metrics(callback(policy), own=("epoch", "loss", "margin")))
                policy.train()
                history.log(logged)

            if callback is not None:
                evaluate(0)
            for epoch in progress(range(cfg.epochs), cfg.progress, desc="ipo"):
                for idx in torch.randperm(n, generator=order_gen).split(cfg.batch_size):
                    with atomic():
                        with Timer() as timer:
                            idx = idx.to(data["prompt_ids"].device)
                            pol_c, pol_r = _logps(policy, dpo.trim_pairs(data, idx), cfg.length_normalize)
                            out = ipo_loss(pol_c, pol_r, ref_c[idx], ref_r[idx], cfg.beta)
                            opt.zero_grad()
                            out[0].mean().backward()
                            if cfg.max_grad_norm is not None:
                                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                            opt.step()
                        history.log({**dpo.preference_log(*out, pol_c, pol_r), "seconds": timer.seconds})
                if eval_data is not None or callback is not None:
                    evaluate(epoch + 1)
    return result
