"""Chapter 5: Direct Preference Optimization (Rafailov et al., 2023).

The KL-regularised RLHF objective max_pi E[r(x, y)] - beta KL[pi(.|x) || pi_ref(.|x)] has a
closed-form optimum pi_r (DPO paper, Eq. 4; ``rlnotes.dpo_closed_form``). Solving it for the reward
(Eq. 5), r(x, y) = beta log(pi_r(y|x) / pi_ref(y|x)) + beta log Z(x), and substituting into
Bradley-Terry makes Z(x) cancel, which leaves a maximum-likelihood loss on the policy itself (Eq. 7):

    L_DPO = -E[ log sigma( beta log(pi(y_w|x) / pi_ref(y_w|x)) - beta log(pi(y_l|x) / pi_ref(y_l|x)) ) ]

(``dpo_loss``). ``implicit_reward`` is r_hat = beta log(pi / pi_ref), ``dpo_gradient`` the
paper's expression for the gradient of L_DPO (Section 4). Chapter 6's IPO (Azar et al. 2023,
eq. 17) swaps the loss for a squared error with a finite target, L_IPO = E[(h - 1/(2 beta))^2],
h the log-ratio margin (``ipo_loss``). ``train`` is one trainer for a causal LM against a frozen
reference model, whose ``loss_type`` picks the loss under TRL's names (``LOSS_TYPES``: "sigmoid"
for DPO, "ipo"), logging the metrics TRL users know (``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import lm
from .measure import check_causal_lm
from .pairs import check_pairs, check_ref_logps, pair_logps, reference_logps, scoring_batch_size, trim_pairs
from .reward import preference_accuracy
from .trainer import (MAX_EPOCHS, Config, History, Timer, TrainResult, atomic, check_bool, check_count, check_model,
                      check_trainable, kept_as_found, make_config, progress, run_guard, training_scope)
from .utils import check_choice, check_finite, check_positive, check_positive_int, check_seed, check_same_shape


# ---------------------------------------------------------------------------------------------
# The DPO loss, the implicit reward and the gradient (DPO paper, Eq. 5, Eq. 7 and Section 4)
# ---------------------------------------------------------------------------------------------

def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r_hat(x, y) = beta log(pi(y|x) / pi_ref(y|x)): Eq. 5 without the beta log Z(x) term (not detached).

    Refused as in ``check_pair_logps``: beta <= 0, and log-probabilities that are not finite tensors of one shape."""
    beta = check_pair_logps(beta, policy_logps=policy_logps, ref_logps=ref_logps)
    return beta * (policy_logps - ref_logps)


def check_pair_logps(beta: float, **logps: torch.Tensor) -> float:
    """The checks every pairwise preference loss makes (DPO, IPO): ``beta`` > 0, the four
    log-probabilities torch tensors (``TypeError`` otherwise) of one shape and finite. Returns ``beta`` as a float."""
    beta = check_positive("beta", beta)
    for name, t in logps.items():
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor of log-probabilities, got {type(t).__name__}")
    check_same_shape(**logps)
    for name, t in logps.items():
        check_finite(name, t.detach())
    return beta


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    """Per-example DPO losses and implicit rewards (DPO paper, Eq. 7).

    loss_i = -log sigma( beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))) ),
    computed with ``logsigmoid`` so it is finite for any finite log-probabilities. Returns
    ``(losses, chosen_rewards, rejected_rewards)``, the rewards being the implicit rewards
    beta log(pi / pi_ref) of the chosen (y_w) and rejected (y_l) responses, detached.
    """
    beta = check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float):
    """Per-pair IPO losses (h - 1/(2 beta))^2 (IPO paper, eq. 17; the book's eq. ipo-loss) and the implicit
    rewards beta log(pi / pi_ref), h = log(pi(y_w) / pi_ref(y_w)) - log(pi(y_l) / pi_ref(y_l)).

    Same arguments and returns as ``dpo_loss``: ``(losses, chosen_rewards, rejected_rewards)``, the rewards
    detached. Each pair is pulled to the margin 1/(2 beta), an implicit-reward margin beta h = 1/2, and no further.
    """
    beta = check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen.detach(), beta * rejected.detach()


LOSS_TYPES = {"sigmoid": dpo_loss, "ipo": ipo_loss}   # TRL's DPOConfig.loss_type names
EVAL_KEYS = ("loss", "accuracy", "margin")             # train's evaluation, logged as eval/<key> with eval/step


def dpo_gradient(params, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> list:
    """The paper's gradient of L_DPO (Section 4, "What does the DPO update do?"), term by term:

        grad L_DPO = -beta E[ sigma(r_hat(x, y_l) - r_hat(x, y_w)) (grad log pi(y_w|x) - grad log pi(y_l|x)) ],

    with r_hat = beta log(pi / pi_ref). Each grad log pi(y|x) is taken separately by autograd
    (one backward pass per response), then weighted and averaged as written, so the result can
    be compared with autograd of ``dpo_loss(...).mean()``. Returns one tensor per parameter.
    Refused as in ``dpo_loss``, and: no pair at all (a mean over nothing), policy log-probabilities
    that do not depend on ``params`` (no ``requires_grad``).
    """
    beta = check_pair_logps(beta, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if policy_chosen_logps.numel() == 0:
        raise ValueError("policy_chosen_logps must hold at least one pair, got none")
    if not (policy_chosen_logps.requires_grad and policy_rejected_logps.requires_grad):
        raise ValueError("policy_chosen_logps and policy_rejected_logps must be computed from params "
                         "(requires_grad), so that their gradients exist")
    params = list(params)
    chosen_rewards = implicit_reward(policy_chosen_logps, ref_chosen_logps, beta).detach()
    rejected_rewards = implicit_reward(policy_rejected_logps, ref_rejected_logps, beta).detach()
    weights = torch.sigmoid(rejected_rewards - chosen_rewards)   # large when the pair is ranked wrongly
    total = [torch.zeros_like(p) for p in params]
    n = policy_chosen_logps.numel()
    for i in range(n):
        grad_w = torch.autograd.grad(policy_chosen_logps.reshape(-1)[i], params, retain_graph=True,
                                     allow_unused=True)
        grad_l = torch.autograd.grad(policy_rejected_logps.reshape(-1)[i], params, retain_graph=True,
                                     allow_unused=True)
        for t, gw, gl in zip(total, grad_w, grad_l):
            gw = torch.zeros_like(t) if gw is None else gw
            gl = torch.zeros_like(t) if gl is None else gl
            t.add_(-beta / n * weights.reshape(-1)[i] * (gw - gl))
    return total


def per_token(chosen: torch.Tensor, rejected: torch.Tensor, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the pairs of ``data`` divided by their responses' lengths (the mean
    log-probability per token, TRL's IPO: ``DPOConfig(length_normalize=True)``)."""
    return chosen / data["chosen_mask"].sum(1), rejected / data["rejected_mask"].sum(1)


@torch.no_grad()
def preference_metrics(policy, ref, data: dict, beta: float, batch_size: int | None = None,
                       ref_logps: tuple | None = None, *, loss_type: str = "sigmoid",
                       length_normalize: bool = False) -> dict:
    """Mean loss (``loss_type``, a key of ``LOSS_TYPES``) and the implicit reward's statistics on a set of
    pairs (e.g. held-out ones).

    ``accuracy`` is the fraction of pairs whose implicit reward beta log(pi / pi_ref) ranks y_w
    above y_l (ties count one half), the number to set beside a reward model's accuracy; ``margin``
    the mean log-ratio margin h = log(pi(y_w) / pi_ref(y_w)) - log(pi(y_l) / pi_ref(y_l)) (IPO's target:
    1/(2 beta)). ``length_normalize``: per-token log-probabilities (``per_token``), the reference's too
    (``ref_logps`` are sums, as ``reference_logps`` returns them). ``policy`` runs in eval mode and is
    handed back in the modes it came in.
    """
    check_model("policy", policy)
    n = check_pairs(data)
    loss_fn = LOSS_TYPES[check_choice("loss_type", loss_type, tuple(LOSS_TYPES))]
    batch_size = scoring_batch_size(batch_size)
    ref_c, ref_r = reference_logps(ref, data, batch_size) if ref_logps is None else check_ref_logps(ref_logps, n)
    with kept_as_found(policy):
        policy.eval()
        pol = [pair_logps(policy, trim_pairs(data, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
    pol_c, pol_r = torch.cat([p[0] for p in pol]), torch.cat([p[1] for p in pol])
    if check_bool("length_normalize", length_normalize):
        (pol_c, pol_r), (ref_c, ref_r) = per_token(pol_c, pol_r, data), per_token(ref_c, ref_r, data)
    losses, chosen, rejected = loss_fn(pol_c, pol_r, ref_c, ref_r, beta)
    return {"loss": losses.mean().item(), "accuracy": preference_accuracy(chosen, rejected),
            "margin": ((pol_c - ref_c) - (pol_r - ref_r)).mean().item(),
            "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item(),
            "logps/chosen": pol_c.mean().item(), "logps/rejected": pol_r.mean().item()}


@dataclass(frozen=True, kw_only=True)
class DPOConfig(Config):
    """DPO and IPO: ``epochs`` passes over the pairs in mini-batches of ``batch_size`` (shuffled if
    ``shuffle``, reproducibly from ``seed``), AdamW at ``lr`` without weight decay, gradients clipped to
    ``max_grad_norm`` (None: none), KL coefficient ``beta``; an evaluation every ``eval_every``
    optimiser steps (None: at the end only); ``pad_id`` pads the two responses of a pair to one width.
    ``loss_type`` picks the loss by TRL's name (``LOSS_TYPES``: "sigmoid" is DPO's Eq. 7, "ipo" IPO's
    squared error with the target margin 1/(2 beta)); ``length_normalize`` scores a response by its mean
    log-probability per token instead of the sum (TRL does so for IPO; the IPO paper sums)."""

    loss_type: str = "sigmoid"
    length_normalize: bool = False
    beta: float = 0.1
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    max_grad_norm: float | None = 1.0
    seed: int = 0
    shuffle: bool = True
    eval_every: int | None = None
    pad_id: int = 0
    progress: bool = False

    def __post_init__(self):
        self.check("loss_type", check_choice, tuple(LOSS_TYPES))
        self.check("length_normalize", check_bool)
        self.check("beta", check_positive)
        self.check("epochs", check_count, MAX_EPOCHS, "MAX_EPOCHS")
        for name in ("batch_size", "eval_every"):
            self.check(name, check_positive_int)
        self.check("lr", check_positive)
        self.check("max_grad_norm", check_positive)
        self.check("seed", check_seed)
        self.check("pad_id", check_positive_int, 0)
        self.check("shuffle", check_bool)
        self.check("progress", check_bool)


def dpo_step(policy, optimizer, params: list, batch: dict, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             cfg: DPOConfig) -> dict:
    """One optimiser step on the mean loss (``cfg.loss_type``: Eq. 7 for DPO) over a mini-batch of pairs;
    returns what it measured under TRL's names."""
    pol_c, pol_r = pair_logps(policy, batch, cfg.pad_id)
    if cfg.length_normalize:
        pol_c, pol_r = per_token(pol_c, pol_r, batch)
    losses, chosen, rejected = LOSS_TYPES[cfg.loss_type](pol_c, pol_r, ref_chosen, ref_rejected, cfg.beta)
    loss = losses.mean()
    optimizer.zero_grad()
    loss.backward()
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    return preference_log(losses, chosen, rejected, pol_c, pol_r)


def preference_log(losses, chosen, rejected, pol_c, pol_r) -> dict:
    """What a preference trainer logs for one batch, under TRL's names: ``loss``, ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins`` (implicit rewards), ``rewards/accuracies``
    (``preference_accuracy``: a tie counts one half), ``logps/chosen``, ``logps/rejected``."""
    return {"loss": losses.mean().item(), "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(), "rewards/margins": (chosen - rejected).mean().item(),
            "rewards/accuracies": preference_accuracy(chosen, rejected),
            "logps/chosen": pol_c.detach().mean().item(), "logps/rejected": pol_r.detach().mean().item()}


def check_callback(callback) -> None:
    """Raise ``TypeError`` unless ``callback`` is None or a callable that takes one argument, the policy
    (a callable whose signature Python cannot read is accepted as it is)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function policy -> dict of numbers (or None), "
                        f"got {type(callback).__name__}")
    try:
        signature = inspect.signature(callback) if callback is not None else None
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to read
        return
    if signature is not None:
        try:
            signature.bind(None)
        except TypeError:
            raise TypeError(f"callback must be a function policy -> dict of numbers (or None): it is called as "
                            f"callback(policy), but its signature is {signature}") from None


def check_vocab(name: str, data: dict, model) -> None:
    """``ValueError`` naming ``name[<key>]`` if a token id of ``data`` (where its mask is 1) is outside
    ``model``'s vocabulary (the embedding's size; no check for a model that does not say)."""
    vocab = lm.vocab_size(model)
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        ids = data[key][data[key.replace("_ids", "_mask")].bool()]
        if vocab is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{name}[{key!r}] must be token ids in [0, {vocab}) (the model's vocabulary), "
                             f"got values from {int(ids.min())} to {int(ids.max())}")


def callback_metrics(returned, own: tuple = ()) -> dict:
    """What a trainer's ``callback(policy)`` returned, as ``{"eval/<name>": float}`` to log.

    None logs nothing. A dict's values must be real numbers: Python ints and floats, NumPy
    scalars, 0-d arrays and 0-d tensors (converted to floats; NaN is logged as it is). Refused:
    anything but None or a dict, a non-string key or a key of the trainer's own evaluation
    (``own``, e.g. ``"loss"``: it would overwrite ``eval/loss``; ``ValueError``), and a value
    that is not a real number (a string, a bool, a tensor of several numbers; ``TypeError``).
    """
    if returned is None:
        return {}
    if not isinstance(returned, dict):
        raise TypeError(f"callback must return a dict of numbers (or None), got {type(returned).__name__}")
    out = {}
    for key, value in returned.items():
        if not isinstance(key, str):
            raise TypeError(f"callback's keys must be strings (logged as eval/<key>), got {key!r}")
        if key in own:
            raise ValueError(f"callback's key {key!r} clashes with the trainer's own eval/{key}; "
                             f"rename it (taken: {list(own)})")
        out[f"eval/{key}"] = _real_number(key, value)
    return out


def _real_number(key: str, value) -> float:
    number = value.item() if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and value.ndim == 0 else value
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return float(number)
    raise TypeError(f"callback's value for {key!r} must be a real number (int, float, a NumPy or 0-d torch "
                    f"scalar), got {value!r}")


def train(data: dict, config: DPOConfig | None = None, *, ref, policy=None, eval_data: dict | None = None,
          callback=None, ref_logps: tuple | None = None, **overrides) -> TrainResult:
    """DPO: the mean of Eq. 7 over mini-batches of (x, y_w, y_l), AdamW without weight decay; IPO's loss
    (``ipo_loss``) in the same loop with ``loss_type="ipo"`` (TRL's one ``DPOTrainer``).

    Settings: those of ``DPOConfig``, as keywords or a ``config``. ``policy`` is trained in place (only what
    the caller left trainable) and handed back in the modes it came in; None: a trainable copy of ``ref``, as
    the paper does. ``ref`` stays frozen and as it was; its log-probabilities are computed once. ``data``
    (and ``eval_data``): the pairs' token tensors, as ``rlnotes.reward.Preferences.encode`` returns them.

    Logs per optimiser step, under TRL's names: ``loss``, ``rewards/chosen``, ``rewards/rejected`` (mean
    implicit rewards beta log(pi / pi_ref)), ``rewards/accuracies`` (``preference_accuracy``: the fraction with
    chosen > rejected, a tie counting one half), ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (mean
    log pi(y|x)) and ``seconds``; every ``eval_every`` steps (and at the end) ``eval/loss``, ``eval/accuracy``
    and ``eval/margin`` on ``eval_data`` (``preference_metrics``), with ``eval/step``. ``callback(policy)``, if
    given, is called at the same points (and before training with ``eval_every``), the policy in eval mode; it
    returns None or a dict of numbers, logged as ``eval/<name>`` (``callback_metrics``). ``ref_logps``: the reference's
    log-probabilities of ``data``, as ``reference_logps(ref, data)`` returns them (sums, divided here if
    ``length_normalize``), to reuse them over several runs (by default they are computed here). Returns a
    ``TrainResult`` whose ``model`` is the policy; an interrupt, from the reference pass on, raises
    ``TrainingInterrupted`` with the result so far.

    Refused: a policy with no trainable parameter (``ValueError``), and float16 parameters in the
    model that is trained (``policy``, or ``ref`` when it is copied; ``TypeError``: allowed are
    float32, float64 and bfloat16, ``rlnotes.trainer.check_model``). A reference that is only run may
    be in any dtype, but must be a causal LM (``measure.check_causal_lm``: a reward model is refused).
    Also refused: token ids outside ``ref``'s vocabulary (``ValueError`` naming ``data[key]``), a
    ``callback`` that cannot be called as ``callback(policy)`` (``TypeError``), ``epochs`` above
    ``trainer.MAX_EPOCHS``. It runs in ``trainer.training_scope``: a caller's ``torch.no_grad()``,
    ``inference_mode()`` or float64 default dtype does not reach it.
    """
    n = check_pairs(data)
    cfg = make_config(DPOConfig, config, **overrides)
    if policy is ref:
        raise ValueError("policy must not be ref itself (ref stays frozen): pass policy=None to train a copy of ref")
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    check_callback(callback)
    check_causal_lm("ref", ref)
    check_model("ref", ref, trained=policy is None)
    check_vocab("data", data, ref)
    if eval_data is not None:
        check_vocab("eval_data", eval_data, ref)
    if policy is not None:
        check_trainable("policy", policy)
    if ref_logps is not None:
        ref_logps = check_ref_logps(ref_logps, n)
    history = History()
    with kept_as_found(*([ref] if policy is None else [ref, policy])), training_scope(cfg.seed):
        if policy is None:
            policy = copy.deepcopy(ref)
            policy.requires_grad_(True)
        params = [p for p in policy.parameters() if p.requires_grad]
        result = TrainResult(policy, history, cfg)
        with run_guard(lambda: result, policy.eval):
            ref_c, ref_r = reference_logps(ref, data) if ref_logps is None else ref_logps
            if cfg.length_normalize:
                ref_c, ref_r = per_token(ref_c, ref_r, data)
            eval_ref = reference_logps(ref, eval_data) if eval_data is not None else None
            _fit(policy, params, ref, data, n, (ref_c, ref_r), eval_data, eval_ref, callback, cfg, history)
    return result


def _fit(policy, params, ref, data, n, ref_logps, eval_data, eval_ref, callback, cfg, history) -> None:
    """``train``'s loop: ``cfg.epochs`` passes of ``dpo_step`` over ``data``, each applied whole (``atomic``)."""
    ref_c, ref_r = ref_logps
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    evaluating = eval_data is not None or callback is not None
    step = 0

    def evaluate():
        logged = {"eval/step": step}
        policy.eval()
        if eval_data is not None:
            m = preference_metrics(policy, ref, eval_data, cfg.beta, ref_logps=eval_ref, loss_type=cfg.loss_type,
                                   length_normalize=cfg.length_normalize)
            logged.update({f"eval/{k}": m[k] for k in EVAL_KEYS})
        if callback is not None:
            logged.update(callback_metrics(callback(policy), own=("step",) + EVAL_KEYS))
        history.log(logged)
        policy.train()

    if evaluating and cfg.eval_every is not None:
        evaluate()
    policy.train()
    for _ in progress(range(cfg.epochs), cfg.progress, desc=f"dpo ({cfg.loss_type})"):
        order = torch.randperm(n, generator=order_gen) if cfg.shuffle else torch.arange(n)
        for idx in order.split(cfg.batch_size):
            idx = idx.to(data["prompt_ids"].device)
            with atomic():
                with Timer() as timer:
                    stats = dpo_step(policy, opt, params, trim_pairs(data, idx), ref_c[idx], ref_r[idx], cfg)
                step += 1
                history.log({**stats, "seconds": timer.seconds})
            if evaluating and cfg.eval_every is not None and step % cfg.eval_every == 0:
                evaluate()
    if evaluating and (cfg.eval_every is None or step % cfg.eval_every != 0):
        evaluate()
