"""Chapter 7: Kahneman-Tversky Optimisation (KTO; Ethayarajh et al., 2024, "KTO: Model Alignment as
Prospect Theoretic Optimization"), on single responses labelled thumbs-up or thumbs-down.

DPO needs pairs (x, y_w, y_l). KTO learns from unpaired labels: each (x, y) is desirable or
undesirable. With the implicit reward ``r(x, y) = log(pi(y|x) / pi_ref(y|x))`` and a reference point
``z0 = KL(pi(y'|x) || pi_ref(y'|x))``, its loss (KTO paper, eq. 8; the book's eq. kto-loss) is

    L_KTO = E[ lambda_y - v(x, y) ],   v(x, y) = lambda_D sigma(beta (r(x, y) - z0))  if y is desirable,
                                                 lambda_U sigma(beta (z0 - r(x, y)))  if y is undesirable,

so each desirable y is pushed above the reference point and each undesirable one below it, and
the value v saturates (prospect theory's loss aversion: lambda_D, lambda_U). z0 is estimated, as
TRL 1.16's ``KTOTrainer`` does it, from mismatched pairs of the same batch (the completion of
example j - 1 after the prompt of example j), averaged, clamped at 0 and detached (no gradient).

``kto_loss`` is that loss, term for term as TRL computes it; ``unpaired`` turns the chapter's
preference pairs into thumbs-up/down labels from the same labeller; ``train`` is the trainer, on the
training contract, logging TRL's keys (``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``logps/chosen``, ``logps/rejected``; TRL's ``kl``, z0, is ``kl/k1_per_sequence``
here, the book's rule for KL keys: it is the k1 estimate, summed over a sequence's tokens and averaged
over the batch's mismatched pairs, clamped at 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from . import lm
from .measure import check_causal_lm
from .reward import Preferences
from .trainer import (
    MAX_EPOCHS,
    Config,
    History,
    Timer,
    TrainResult,
    atomic,
    check_bool,
    check_count,
    check_model,
    check_trainable,
    kept_as_found,
    make_config,
    progress,
    run_guard,
    training_scope,
)
from .utils import check_choice, check_finite, check_positive, check_positive_int, check_seed

UNPAIRED_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "label")
UNPAIR_METHODS = ("labeller", "pairs")


# ---------------------------------------------------------------------------------------------
# The loss (KTO paper, eq. 8; TRL 1.16 KTOTrainer, loss_type="kto")
# ---------------------------------------------------------------------------------------------

def check_logps(**logps) -> None:
    """Each of ``logps`` a 1-D finite torch tensor (``TypeError`` / ``ValueError`` naming it)."""
    for name, t in logps.items():
        if not torch.is_tensor(t) or t.dim() != 1:
            got = f"a {t.dim()}-D tensor" if torch.is_tensor(t) else type(t).__name__
            raise TypeError(f"{name} must be a 1-D torch.Tensor of sequence log-probabilities, got {got}")
        check_finite(name, t.detach())


def kto_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, policy_kl_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, ref_kl_logps: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Per-example KTO losses (KTO paper, eq. 8; eq. kto-loss), as TRL 1.16's ``KTOTrainer`` computes them.

    z0 = clamp(mean(policy_kl_logps - ref_kl_logps), min=0), detached: the reference point, from the
    batch's mismatched (prompt, completion) pairs. Desirable (chosen) examples lose
    ``desirable_weight * (1 - sigma(beta (r - z0)))``, undesirable (rejected) ones
    ``undesirable_weight * (1 - sigma(beta (z0 - r)))``, r = log pi - log pi_ref. Returns
    ``(losses, chosen_rewards, rejected_rewards, z0)``: the losses of the chosen examples then the
    rejected ones (their mean is the loss, as TRL's), the implicit rewards beta r (detached) and z0
    (a 0-d tensor). Either side may be empty, not both. Names as TRL's (``desirable_weight``, ...).
    Refused: ``beta`` or a weight <= 0, log-probabilities that are not 1-D finite tensors, a policy
    side whose length differs from its reference's, no example at all.
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                policy_kl_logps=policy_kl_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps, ref_kl_logps=ref_kl_logps)
    beta = check_positive("beta", beta)
    w_d, w_u = check_positive("desirable_weight", desirable_weight), check_positive("undesirable_weight",
                                                                                      undesirable_weight)
    for side, a, b in (("chosen", policy_chosen_logps, ref_chosen_logps),
                       ("rejected", policy_rejected_logps, ref_rejected_logps), ("kl", policy_kl_logps, ref_kl_logps)):
        if a.shape != b.shape:
            raise ValueError(f"policy_{side}_logps and ref_{side}_logps must have one shape, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if policy_chosen_logps.numel() + policy_rejected_logps.numel() == 0 or policy_kl_logps.numel() == 0:
        raise ValueError("kto_loss needs at least one example and one KL pair, got none")
    z0 = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = torch.cat((w_d * (1 - torch.sigmoid(beta * (chosen - z0))),
                        w_u * (1 - torch.sigmoid(beta * (z0 - rejected)))), 0)
    return losses, beta * chosen.detach(), beta * rejected.detach(), z0


# ---------------------------------------------------------------------------------------------
# Unpaired data: thumbs up or down for single responses
# ---------------------------------------------------------------------------------------------

@dataclass
class Unpaired:
    """Single responses with a binary label: ``prompts``, ``completions`` (lists of strings), ``labels``
    (bool tensor, True = desirable, thumbs up) and the hidden true rewards ``r_star`` of the completions."""

    prompts: list
    completions: list
    labels: torch.Tensor
    r_star: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def encode(self, tokenizer, device=None) -> dict:
        """Token tensors (``UNPAIRED_KEYS``): ``prompt_ids/prompt_mask`` left-padded,
        ``completion_ids/completion_mask`` right-padded with EOS appended (as ``Preferences.encode``), ``label``."""
        p, pm = lm.encode_prompts(tokenizer, list(self.prompts), device)
        c, cm = lm.encode_responses(tokenizer, list(self.completions), device=device)
        return dict(prompt_ids=p, prompt_mask=pm, completion_ids=c, completion_mask=cm, label=self.labels.to(p.device))


def unpaired(prefs: Preferences, *, method: str = "labeller", seed: int = 0) -> Unpaired:
    """Thumbs-up/down labels for the 2N responses of N preference pairs, in a seeded random order.

    ``method="labeller"`` (the default): the SAME Bradley-Terry labeller on r* that labelled the pairs
    (``reward.label_preferences``), now asked about one response at a time: thumbs up with probability
    sigma(r*(x, y) - r_bar), r_bar the mean r* of the 2N responses (samples of pi^SFT, so r_bar estimates
    E_{pi^SFT}[r*]): the probability that the labeller prefers y to a typical pi^SFT response. Each y is
    labelled independently (Bernoulli, ``seed``), so a label carries no trace of the pair it came from.
    ``method="pairs"``: TRL's ``unpair_preference_dataset``, y_w up and y_l down (the pairing is kept in
    the labels: exactly half are desirable). Either way the data budget is the pairs': the same 2N sampled
    responses to the same prompts, one label each (DPO reads N comparisons of the same 2N responses).
    """
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a reward.Preferences (e.g. prepare(...).train_prefs), "
                        f"got {type(prefs).__name__}")
    method, seed = check_choice("method", method, UNPAIR_METHODS), check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    r = torch.cat([prefs.r_chosen, prefs.r_rejected]).double()
    if method == "labeller":
        labels = torch.rand(len(r), generator=gen, dtype=torch.float64) < torch.sigmoid(r - r.mean())
    else:
        labels = torch.arange(len(r)) < len(prefs)
    order = torch.randperm(len(r), generator=gen).tolist()
    prompts, completions = list(prefs.prompts) * 2, list(prefs.chosen) + list(prefs.rejected)
    return Unpaired([prompts[i] for i in order], [completions[i] for i in order], labels[order],
                    r[order].float())


def check_unpaired(data: dict, name: str = "data") -> int:
    """The number of examples in ``data`` (``Unpaired.encode``'s tensors, ``UNPAIRED_KEYS``). Refused,
    naming ``name``: not a dict (``TypeError``), a missing key (``ValueError``), ids or masks that are
    not 2-D integer tensors or a ``label`` that is not a 1-D tensor (``TypeError``), labels other than
    0/1, lengths that differ, fewer than 1 example, an empty completion (``ValueError``)."""
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a dict with the tensors {UNPAIRED_KEYS} (Unpaired.encode), "
                        f"got {type(data).__name__}")
    missing = [k for k in UNPAIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{name} must be a dict with the tensors {UNPAIRED_KEYS}; missing {missing}")
    for k in UNPAIRED_KEYS[:4]:
        t = data[k]
        if not torch.is_tensor(t) or t.dim() != 2 or t.is_floating_point():
            raise TypeError(f"{name}[{k!r}] must be a 2-D integer torch.Tensor, got "
                            f"{f'a {t.dim()}-D {t.dtype} tensor' if torch.is_tensor(t) else type(t).__name__}")
    label = data["label"]
    if not torch.is_tensor(label) or label.dim() != 1:
        raise TypeError(f"{name}['label'] must be a 1-D tensor of True/False, got {type(label).__name__}")
    if bool(((label != 0) & (label != 1)).any()):
        raise ValueError(f"{name}['label'] must hold only 0 and 1 (or False and True)")
    n = len(label)
    if n == 0 or any(len(data[k]) != n for k in UNPAIRED_KEYS):
        raise ValueError(f"{name} must hold the same number (>= 1) of prompts, completions and labels, "
                         f"got {[len(data[k]) for k in UNPAIRED_KEYS]}")
    if bool((data["completion_mask"].sum(1) == 0).any()):
        raise ValueError(f"{name}['completion_mask'] must mark at least one token per example")
    return n


def _trim_unpaired(data: dict, idx) -> dict:
    """The examples at ``idx`` (a 1-D tensor of positions or a slice), without all-padding columns."""
    b = {k: data[k][idx] for k in UNPAIRED_KEYS}
    start = b["prompt_ids"].shape[1] - max(int(b["prompt_mask"].sum(0).ne(0).sum()), 1)
    b["prompt_ids"], b["prompt_mask"] = b["prompt_ids"][:, start:], b["prompt_mask"][:, start:]
    width = max(int(b["completion_mask"].sum(1).max()), 1)
    b["completion_ids"], b["completion_mask"] = b["completion_ids"][:, :width], b["completion_mask"][:, :width]
    return b


def _kl_batch(batch: dict) -> dict:
    """TRL's mismatched pairs for z0: example j's prompt with example j - 1's completion (the last one's
    goes to the first), within the batch: ``KL_completion_ids = [c[-1]] + c[:-1]``."""
    return {**batch, "completion_ids": batch["completion_ids"].roll(1, 0),
            "completion_mask": batch["completion_mask"].roll(1, 0)}


def _completion_logps(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) of each example of ``batch`` (summed over the completion's tokens), [B]."""
    return lm.sequence_logprob(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                               batch["completion_mask"])


@torch.no_grad()
def reference_logps(ref, data: dict, batch_size: int = 512) -> torch.Tensor:
    """log pi_ref(y|x) of every example of ``data``, [n], ``batch_size`` examples per pass (eval mode;
    ``ref`` handed back in the modes it came in)."""
    check_model("ref", ref)
    n, batch_size = check_unpaired(data), check_positive_int("batch_size", batch_size)
    with kept_as_found(ref):
        ref.eval()
        return torch.cat([_completion_logps(ref, _trim_unpaired(data, slice(s, s + batch_size)))
                          for s in range(0, n, batch_size)]).float()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class KTOConfig(Config):
    """KTO: ``epochs`` passes over the examples in mini-batches of ``batch_size`` (>= 2: z0 needs
    mismatched pairs; a last batch of one example pairs it with itself, as TRL's would; shuffled if
    ``shuffle``, reproducibly from ``seed``), AdamW at ``lr`` without weight decay, gradients clipped to
    ``max_grad_norm`` (None: none); ``beta``, ``desirable_weight``, ``undesirable_weight`` as TRL's
    ``KTOConfig`` (defaults 0.1, 1.0, 1.0; TRL's learning rate is 1e-6 for large models, this tiny one
    takes 1e-3 like ``dpo.DPOConfig``)."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    max_grad_norm: float | None = 1.0
    seed: int = 0
    shuffle: bool = True
    progress: bool = False

    def __post_init__(self):
        for name in ("beta", "desirable_weight", "undesirable_weight", "lr", "max_grad_norm"):
            self.check(name, check_positive)
        self.check("epochs", check_count, MAX_EPOCHS, "MAX_EPOCHS")
        self.check("batch_size", check_positive_int, 2)
        self.check("seed", check_seed)
        self.check("shuffle", check_bool)
        self.check("progress", check_bool)


def kto_step(policy, ref, optimizer, params: list, batch: dict, ref_logps: torch.Tensor, cfg: KTOConfig) -> dict:
    """One optimiser step on the mean of ``kto_loss`` over a mini-batch; returns what it measured under TRL's
    names. z0's pairs (``_kl_batch``) are scored without a graph: z0 is detached anyway."""
    logps = _completion_logps(policy, batch)
    with torch.no_grad():
        kl = _kl_batch(batch)
        pol_kl, ref_kl = _completion_logps(policy, kl), _completion_logps(ref, kl)
    up = batch["label"].bool()
    losses, chosen, rejected, z0 = kto_loss(logps[up], logps[~up], pol_kl, ref_logps[up], ref_logps[~up], ref_kl,
                                            cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    optimizer.zero_grad()
    losses.mean().backward()
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    nan = float("nan")
    mean = lambda t: t.detach().mean().item() if t.numel() else nan
    return {"loss": losses.mean().item(), "kl/k1_per_sequence": z0.item(), "rewards/chosen": mean(chosen),
            "rewards/rejected": mean(rejected), "rewards/margins": mean(chosen) - mean(rejected),
            "logps/chosen": mean(logps[up]), "logps/rejected": mean(logps[~up])}


def train(data: dict, config: KTOConfig | None = None, *, ref, policy=None, ref_logps: torch.Tensor | None = None,
          **overrides) -> TrainResult:
    """KTO (eq. kto-loss, ``kto_loss``) of a causal LM against the frozen ``ref`` on ``data``
    (``Unpaired.encode``'s tensors), as TRL 1.16's ``KTOTrainer``.

    ``policy``: the model to train (its parameters with ``requires_grad``); None trains a copy of
    ``ref``. ``ref_logps``: ``reference_logps(ref, data)``, to reuse over several runs. Logs per update
    ``loss``, ``kl/k1_per_sequence`` (z0, TRL's ``kl``), ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``logps/chosen``, ``logps/rejected`` (NaN for a side with no example in the batch) and ``seconds``.
    Refused as ``dpo.train`` refuses (a policy that is ``ref``, nothing trainable, float16, a reference
    that is not a causal LM), and ``data`` that ``check_unpaired`` refuses, ``ref_logps`` of another
    shape. A Ctrl-C raises ``TrainingInterrupted`` with the result so far.
    """
    n = check_unpaired(data)
    cfg = make_config(KTOConfig, config, **overrides)
    if policy is ref:
        raise ValueError("policy must not be ref itself (ref stays frozen): pass policy=None to train a copy of ref")
    check_causal_lm("ref", ref)
    check_model("ref", ref, trained=policy is None)
    if policy is not None:
        check_trainable("policy", policy)
    if ref_logps is not None:
        check_logps(ref_logps=ref_logps)
        if ref_logps.shape != (n,):
            raise ValueError(f"ref_logps must have shape ({n},) (reference_logps(ref, data)), "
                             f"got {tuple(ref_logps.shape)}")
    history = History()
    with kept_as_found(*([ref] if policy is None else [ref, policy])), training_scope(cfg.seed):
        if policy is None:
            policy = copy.deepcopy(ref)
            policy.requires_grad_(True)
        result = TrainResult(policy, history, cfg)
        with run_guard(lambda: result, policy.eval):
            ref_logps = reference_logps(ref, data) if ref_logps is None else ref_logps
            ref.eval()
            _fit(policy, ref, data, n, ref_logps, cfg, history)
    return result


def _fit(policy, ref, data: dict, n: int, ref_logps: torch.Tensor, cfg: KTOConfig, history: History) -> None:
    """``train``'s loop: ``cfg.epochs`` passes of ``kto_step``, each update applied whole (``atomic``)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    policy.train()
    for _ in progress(range(cfg.epochs), cfg.progress, desc="kto"):
        order = torch.randperm(n, generator=order_gen) if cfg.shuffle else torch.arange(n)
        for idx in order.split(cfg.batch_size):
            idx = idx.to(data["label"].device)
            with atomic():
                with Timer() as timer:
                    stats = kto_step(policy, ref, opt, params, _trim_unpaired(data, idx), ref_logps[idx], cfg)
                history.log({**stats, "seconds": timer.seconds})
