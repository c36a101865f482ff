"""Chapter 4, phase 2: preferences labelled by a Bradley-Terry "labeller", and a reward model r_phi.

The labeller prefers y_1 to y_2 with probability p*(y_1 > y_2 | x) = sigma(r*(x, y_1) - r*(x, y_2))
(eq. rlhf-bt); r_phi is fitted by maximum likelihood under the same model, L_R = -E_D[log
sigma(r_phi(x, y_w) - r_phi(x, y_l))] (eq. rlhf-rm). ``preference_accuracy`` is the book's one
measure of how well any score ranks preference pairs (the reward model here, DPO's implicit
reward in chapter 5). ``VerifiableReward`` puts the task's r* behind the reward model's call
signature (chapter 6's PPO on the verifiable reward); ``check_rewards`` the book's one check of what a reward function or reward
model returns (chapters 4 and 6).
"""

from __future__ import annotations

import copy
import math
import operator
import reprlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import lm, sampling, sentiment
from .sft import SFTConfig
from .pairs import stack_pairs
from .trainer import check_model
from .trainer import History, Timer, TrainResult, atomic, make_config, progress, run_guard, training_scope
from .utils import check_finite, check_in_range, check_positive_int, check_same_shape, check_seed


def _as_rewards(**scores) -> list[torch.Tensor]:
    """The given rewards (tensors, numbers or lists of numbers) as tensors, or raise naming the argument.

    Refused: anything that is not real numbers (``TypeError``: strings, bools, complex numbers) and
    NaN or infinite values (``ValueError``). A float tensor comes back as it is (no copy); integers
    become the default float dtype."""
    out = []
    for name, x in scores.items():
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be real numbers (a tensor or a list of floats), got {x!r}") from None
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be real numbers (a tensor or a list of floats), got {t.dtype}")
        t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        check_finite(name, t)
        out.append(t)
    return out


def bt_probability(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry p*(y1 > y2 | x) = exp r1 / (exp r1 + exp r2) = sigma(r1 - r2) (eq. rlhf-bt).

    ``r1`` and ``r2``: finite rewards of one shape, or one of them a single number (compared with
    every entry of the other); other shapes are refused rather than broadcast (``ValueError``)."""
    r1, r2 = _as_rewards(r1=r1, r2=r2)
    if r1.dim() and r2.dim():
        check_same_shape(r1=r1, r2=r2)
    return torch.sigmoid(r1 - r2)


def _check_pairs(r_chosen, r_rejected) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards of a batch of preference pairs, checked: finite real numbers (``_as_rewards``),
    one shape, at least one pair (``ValueError`` naming the arguments otherwise)."""
    r_chosen, r_rejected = _as_rewards(r_chosen=r_chosen, r_rejected=r_rejected)
    check_same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    if r_chosen.numel() == 0:
        raise ValueError("r_chosen and r_rejected must hold at least one pair, got none")
    return r_chosen, r_rejected


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """L_R = -E_D[ log sigma(r_phi(x, y_w) - r_phi(x, y_l)) ] (eq. rlhf-rm), with logsigmoid: finite at any margin.

    Refused: NaN or infinite rewards, shapes that differ, no pairs (``ValueError``), non-numbers (``TypeError``)."""
    r_chosen, r_rejected = _check_pairs(r_chosen, r_rejected)
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def preference_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The fraction of pairs a reward ranks like the labels (r_chosen > r_rejected); a tie counts one half.

    Refused: NaN or infinite rewards, shapes that differ, no pairs (whose mean is NaN) (``ValueError``),
    non-numbers (``TypeError``)."""
    r_chosen, r_rejected = _check_pairs(r_chosen, r_rejected)
    return ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean().item()


@dataclass
class Preferences:
    """A preference data set D = {(x, y_w, y_l)}, with the (hidden) true rewards r* of y_w and y_l
    (``r_chosen``, ``r_rejected``: one finite number per pair, 1-D)."""

    prompts: list
    chosen: list
    rejected: list
    r_chosen: torch.Tensor
    r_rejected: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.prompts, (list, tuple)) or len(self.prompts) == 0:
            raise ValueError("prompts must be a non-empty list of strings (empty preference data)")
        for name in ("prompts", "chosen", "rejected"):
            seq = getattr(self, name)
            if not isinstance(seq, (list, tuple)) or not all(isinstance(s, str) for s in seq):
                raise ValueError(f"{name} must be a list of strings")
        n = len(self.prompts)
        rewards = _as_rewards(r_chosen=self.r_chosen, r_rejected=self.r_rejected)  # real numbers, finite
        self.r_chosen, self.r_rejected = (r.to(torch.float32) for r in rewards)
        for name in ("r_chosen", "r_rejected"):
            if getattr(self, name).dim() != 1:
                raise ValueError(f"{name} must hold one reward per pair: a 1-D list or tensor of {n} numbers, "
                                 f"got shape {tuple(getattr(self, name).shape)}")
        for name in ("chosen", "rejected", "r_chosen", "r_rejected"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per prompt ({n}), got {len(getattr(self, name))}")
        check_finite("r_chosen", self.r_chosen)
        check_finite("r_rejected", self.r_rejected)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx) -> "Preferences":
        """The pairs at positions ``idx`` (a list of ints in [0, len(self)))."""
        try:
            idx = [operator.index(i) for i in idx]
        except TypeError:
            raise TypeError(f"idx must be a list of integer positions, got {reprlib.repr(idx)}") from None
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"idx must hold positions in [0, {len(self)}) (the number of pairs), got {bad[0]}")
        return Preferences([self.prompts[i] for i in idx], [self.chosen[i] for i in idx],
                           [self.rejected[i] for i in idx], self.r_chosen[idx], self.r_rejected[idx])

    def encode(self, tokenizer, device=None) -> dict:
        """Token tensors: ``prompt_ids/prompt_mask`` (left-padded), ``chosen_ids/chosen_mask``,
        ``rejected_ids/rejected_mask`` (right-padded, EOS appended)."""
        p, pm = lm.encode_prompts(tokenizer, list(self.prompts), device)
        c, cm = lm.encode_responses(tokenizer, list(self.chosen), device=device)
        r, rm = lm.encode_responses(tokenizer, list(self.rejected), device=device)
        return dict(prompt_ids=p, prompt_mask=pm, chosen_ids=c, chosen_mask=cm, rejected_ids=r, rejected_mask=rm)


def sample_pairs(model, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int = 8,
                 batch_size: int = 512) -> tuple[list[str], list[str]]:
    """Two independent responses y1, y2 ~ pi(.|x) per prompt (phase 2's comparison pairs).

    ``prompts``: a non-empty list of strings (``sentiment.check_texts``); ``batch_size``: an integer >= 1;
    ``seed``: an integer in [0, 2**63) (``utils.check_seed``)."""
    prompts, seed = sentiment.check_texts("prompts", prompts), check_seed("seed", seed)
    batch_size = check_positive_int("batch_size", batch_size)
    check_model("model", model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    y1, y2 = [], []
    for i in range(0, len(prompts), batch_size):
        p, pm = lm.encode_prompts(tokenizer, prompts[i:i + batch_size] * 2, device)
        ids, mask = sampling.sample(model, tokenizer, p, pm, max_new_tokens, generator=gen)
        text = lm.decode_responses(tokenizer, ids, mask)
        half = len(text) // 2
        y1 += text[:half]
        y2 += text[half:]
    return y1, y2


def label_preferences(task, prompts: list[str], y1: list[str], y2: list[str], *, seed: int) -> Preferences:
    """A simulated labeller: prefers y1 with probability sigma(r*(x, y1) - r*(x, y2)) (Bradley-Terry on r*).

    ``prompts``, ``y1``, ``y2``: non-empty lists of strings of one length; ``seed``: ``utils.check_seed``."""
    if not (len(prompts) == len(y1) == len(y2)) or not prompts:
        raise ValueError("prompts, y1 and y2 must be non-empty and of equal length, "
                         f"got {len(prompts)}, {len(y1)}, {len(y2)}")
    prompts, y1, y2 = (sentiment.check_texts("prompts", prompts), sentiment.check_texts("y1", y1),
                       sentiment.check_texts("y2", y2))
    seed = check_seed("seed", seed)
    if not callable(getattr(task, "true_rewards", None)):
        raise TypeError(f"task must have a true_rewards(prompts, responses) method (a sentiment.SentimentTask), "
                        f"got {type(task).__name__} {task!r:.60}")
    r1, r2 = task.true_rewards(prompts, y1), task.true_rewards(prompts, y2)
    first = torch.rand(len(prompts), generator=torch.Generator().manual_seed(seed)) < bt_probability(r1, r2)
    chosen = [a if f else b for a, b, f in zip(y1, y2, first.tolist())]
    rejected = [b if f else a for a, b, f in zip(y1, y2, first.tolist())]
    return Preferences(list(prompts), chosen, rejected, torch.where(first, r1, r2), torch.where(first, r2, r1))


def check_base_lm(name: str, model) -> None:
    """``TypeError`` naming ``name`` unless ``model`` is a transformers causal LM that a ``RewardModel`` can
    start from (a ``torch.nn.Module`` with ``.config.hidden_size`` and ``.base_model``; a RewardModel is not)."""
    check_model(name, model)
    if not isinstance(getattr(getattr(model, "config", None), "hidden_size", None), int) or \
            not isinstance(getattr(model, "base_model", None), nn.Module):
        raise TypeError(f"{name} must be a transformers causal LM (with .config.hidden_size and .base_model, "
                        f"e.g. models.tiny_gpt2's), got {type(model).__name__}")


class RewardModel(nn.Module):
    """r_phi(x, y): a copy of the SFT model with a linear head on the last layer's hidden state at EOS.

    ``offset`` is subtracted from every output; ``normalize_`` sets it so that r_phi has mean 0
    on pi^SFT's samples, E_{x,y}[r_phi(x, y)] = 0, as the source prescribes.
    """

    def __init__(self, base_lm):
        check_base_lm("base_lm", base_lm)
        super().__init__()
        self.lm = copy.deepcopy(base_lm).requires_grad_(True)
        self.head = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.lm.config.hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """r_phi(x, y), [k B], for k responses per prompt (prompt-major; k = 1: one each)."""
        h = lm.last_hidden(self.lm.base_model, prompt_ids, prompt_mask, response_ids, response_mask)  # at EOS
        return self.head(h.float()).squeeze(-1) - self.offset

    @torch.no_grad()
    def score(self, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 512) -> torch.Tensor:
        """r_phi for text pairs, [B] (on the CPU). ``prompts`` and ``responses``: non-empty lists of
        strings of one length; ``batch_size``: an integer >= 1. Prompt + response must fit the
        model's context (``lm.check_context``, checked by ``lm.last_hidden``)."""
        prompts, responses = sentiment.check_texts("prompts", prompts), sentiment.check_texts("responses", responses)
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length (one response per prompt), "
                             f"got {len(prompts)} and {len(responses)}")
        batch_size = check_positive_int("batch_size", batch_size)
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            p = lm.encode_prompts(tokenizer, prompts[i:i + batch_size], device)
            r = lm.encode_responses(tokenizer, responses[i:i + batch_size], device=device)
            out.append(self(*p, *r).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def normalize_(self, tokenizer, prompts: list[str], responses: list[str]) -> float:
        """Shift r_phi to mean zero on these (x, y); returns the offset removed."""
        self.offset += self.score(tokenizer, prompts, responses).mean().to(self.offset)
        return self.offset.item()


class VerifiableReward(nn.Module):
    """A program as the reward model: r*(x, y) of ``task`` computed from token ids (no parameters).

    It has the reward model's call signature, so chapter 4's PPO (``rlhf.train``) can
    optimise the verifiable reward r* instead of a learned r_phi.
    """

    def __init__(self, task, tokenizer):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        keep = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(prompt_ids.tolist(), prompt_mask.tolist())]
        prompts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in keep]
        text = lm.decode_responses(self.tokenizer, response_ids, response_mask)
        return self.task.true_rewards(prompts, text).to(response_ids.device)


@dataclass(frozen=True, kw_only=True)
class RewardConfig(SFTConfig):
    """Reward-model training: the supervised loop of ``SFTConfig`` (``steps`` AdamW steps, ``lr``
    annealed linearly to 0, ``batch_size`` pairs drawn at random from D, ``seed``) with ``weight_decay``."""

    lr: float = 1e-3
    weight_decay: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        self.check("weight_decay", check_in_range, 0.0, math.inf)


def train(prefs: Preferences, config: RewardConfig | None = None, *, sft, tokenizer, **overrides) -> TrainResult:
    """Phase 2: minimise L_R (eq. rlhf-rm) over mini-batches of D, then normalise r_phi to mean 0 on D's responses.

    ``prefs`` are the labelled pairs, ``sft`` the LM the reward model starts from (copied, not
    changed), ``tokenizer`` its tokenizer. Settings: those of ``RewardConfig``, as keywords or a ``config``.
    Returns a ``TrainResult`` whose ``model`` is the ``RewardModel`` (frozen); logs per step
    ``loss``, ``accuracy`` (on the mini-batch, ``preference_accuracy``) and ``seconds``. Refused: an ``sft``
    that is not a causal LM or has float16 parameters (``TypeError``: the copy is trained, ``trainer.check_model``).
    Runs with gradients on and float32 as the default dtype (``trainer.training_scope``). A Ctrl-C raises
    ``TrainingInterrupted`` whose ``.result`` holds the reward model so far (None before it is built; not
    normalised, not frozen).
    """
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a Preferences, got {type(prefs).__name__}")
    cfg = make_config(RewardConfig, config, **overrides)
    check_model("sft", sft, trained=True)
    check_base_lm("sft", sft)
    lm.special_id(tokenizer, "pad")
    device = next(sft.parameters()).device
    history = History()
    made = {}  # the reward model, once built: a Ctrl-C from the call's start on hands back what there is
    with training_scope(cfg.seed), run_guard(lambda: TrainResult(made.get("rm"), history, cfg)):
        rm = made["rm"] = RewardModel(sft).to(device)
        _fit(rm, prefs.encode(tokenizer, device), cfg, history, tokenizer.pad_token_id)
        rm.normalize_(tokenizer, list(prefs.prompts) * 2, list(prefs.chosen) + list(prefs.rejected))
        rm.requires_grad_(False)
    return TrainResult(rm, history, cfg)


def _fit(rm: RewardModel, t: dict, cfg: RewardConfig, history: History, pad_id: int) -> None:
    """The reward model's loop: ``cfg.steps`` AdamW steps on mini-batches of the encoded pairs ``t``."""
    device = next(rm.parameters()).device
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(t["prompt_ids"])
    rm.train()
    try:
        for _ in progress(range(cfg.steps), cfg.progress, desc="reward model"):
            with atomic():
                with Timer() as timer:
                    idx = torch.randint(n, (cfg.batch_size,), generator=gen).to(device)
                    pairs = stack_pairs({k: v[idx] for k, v in t.items()}, pad_id)
                    rc, rr = rm(*pairs).view(-1, 2).unbind(1)  # one pass, each prompt run once
                    loss = reward_loss(rc, rr)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                accuracy = preference_accuracy(rc.detach(), rr.detach())
                history.log(loss=loss, accuracy=accuracy, seconds=timer.seconds)
    finally:
        rm.eval()


# ------------------------------------------------------------ what a reward function returns

def check_rewards(name: str, value, n: int, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``value``, what ``name`` returned for ``n`` responses, as a tensor [n] on ``device``.

    Accepted: a tensor, NumPy array, list or tuple of ``n`` real numbers (integers too), or one
    number when ``n`` is 1; converted once to ``dtype`` (None: a floating tensor keeps its dtype,
    anything else becomes torch's default float dtype). Refused: TypeError for anything but real
    numbers (None, strings, dicts, bools, complex), ValueError for another count or shape (a 2-D
    array, nested lists) and for NaN or inf.
    """
    allowed = f"one number per response ({n}): a list, tuple, NumPy array or tensor of {n} real numbers"
    python_numbers = not torch.is_tensor(value) and not isinstance(value, np.ndarray)
    if not torch.is_tensor(value):
        try:
            if isinstance(value, (str, bytes, dict)):
                raise TypeError
            # through NumPy: Python floats stay float64 until the one cast below, which names an overflow
            value = torch.as_tensor(np.asarray(value) if python_numbers else value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must return {allowed}; got {type(value).__name__} {reprlib.repr(value)}") from None
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must return {allowed}; got {value.dtype} values (convert with float())")
    if value.ndim == 0 and n == 1:
        value = value.reshape(1)
    if value.ndim != 1 or len(value) != n:
        got = "one number" if value.ndim == 0 else (f"{len(value)} values" if value.ndim == 1 else
                                                      f"an array of shape {tuple(value.shape)}")
        raise ValueError(f"{name} must return {allowed}; got {got}")
    if not bool(torch.isfinite(value).all()):
        bad = torch.nonzero(~torch.isfinite(value)).flatten().tolist()
        raise ValueError(f"{name} must return finite numbers; got NaN or inf for responses {bad[:8]}")
    if dtype is None:
        dtype = value.dtype if value.is_floating_point() and not python_numbers else torch.get_default_dtype()
    out = value.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(out).all()):  # finite before the cast: too large for dtype
        bad = torch.nonzero(~torch.isfinite(out)).flatten().tolist()
        kind = str(dtype).replace("torch.", "")
        raise ValueError(f"{name} must return numbers that fit {kind} (at most {torch.finfo(dtype).max:.4g} in "
                         f"size); got values too large for {kind} for responses {bad[:8]}")
    return out
