"""Chapter 4, phase 1: supervised fine-tuning (SFT) of a causal language model.

pi^SFT maximises the likelihood of demonstration responses y given prompts x, token by token:
L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t) (eq. rlhf-sft). The result is chapter 4's
reference policy pi_ref, the starting point of every method after it.

The checks every LM trainer makes on the caller's models live here too (``check_model``,
``check_trainable``, ``kept_as_found``): ``rlnotes.dpo``, ``rlnotes.pairs`` and ``rlnotes.cost`` use them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import lm, sentiment
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, make_config, progress, run_guard,
                      training_scope)
from .utils import check_positive, check_positive_int, check_seed

# ----------------------------------------------------------- what a trainer does to the caller's models

TRAIN_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

# The largest batch_size (texts per SFT step, pairs per reward-model step): the book uses at most 64 and the tests
# 1000; at 4096 a step of the toy model takes about a second on a CPU, while 10**6 runs for minutes per step
# before the allocator fails.
MAX_BATCH_SIZE = 4096


def check_model(name: str, model, trained: bool = False) -> None:
    """Raise ``TypeError`` unless ``model`` is a ``torch.nn.Module``; with ``trained``, also unless
    its floating-point parameters are float32, float64 or bfloat16 (``TRAIN_DTYPES``).

    float16 is refused on every device: the trainers keep no float32 master weights and scale no
    loss, and AdamW's eps (1e-8) is 0 in float16, so a parameter whose gradient is 0 becomes
    0 / 0 = NaN at the first step. Also with ``trained``, ``ValueError`` for parameters made inside
    ``torch.inference_mode()`` (inference tensors, which autograd cannot train). A model that is only run
    (a frozen reference) may be in any dtype.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a causal LM), got {type(model).__name__}")
    if trained and any(p.is_inference() for p in model.parameters()):
        raise ValueError(f"{name} was built inside torch.inference_mode(): its parameters are inference tensors, "
                         f"which autograd cannot train; build it outside inference_mode")
    if trained:
        bad = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()}
                     - {str(d) for d in TRAIN_DTYPES})
        if bad:
            raise TypeError(f"{name} has {', '.join(bad)} parameters, a dtype the trainers cannot train in "
                            f"(no loss scaling: AdamW turns float16 weights into NaN); allowed: float32, "
                            f"float64 or bfloat16, e.g. {name}.float()")


def check_trainable(name: str, model) -> list:
    """The parameters of ``model`` that a trainer trains: those the caller left with
    ``requires_grad=True``. Raises as ``check_model(name, model, trained=True)`` does, and
    ``ValueError`` if no parameter requires a gradient (a frozen model has nothing to train)."""
    check_model(name, model, trained=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name} has no trainable parameter (requires_grad is False for all of them): "
                         f"unfreeze what should be trained, e.g. {name}.requires_grad_(True)")
    return params


@contextlib.contextmanager
def kept_as_found(*models):
    """Run a block, then put back, however it ends (an error, an interrupt), what a trainer changes
    on the caller's models besides their weights: each parameter's ``requires_grad`` and each
    module's train/eval mode."""
    saved = [([(p, p.requires_grad) for p in m.parameters()], [(mod, mod.training) for mod in m.modules()])
             for m in models]
    try:
        yield
    finally:
        for params, modules in saved:
            for p, flag in params:
                p.requires_grad_(flag)
            for mod, flag in modules:
                mod.training = flag


# -------------------------------------------------------------------------------------- the loss

def sft_loss(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t), over response tokens only (eq. rlhf-sft).

    ``ValueError`` if ``response_mask`` marks no token (the mean of nothing)."""
    logp = lm.token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    n_tokens = response_mask.sum()
    if not bool(n_tokens > 0):
        raise ValueError("response_mask must mark at least one response token, got none")
    return -logp.sum() / n_tokens


@torch.no_grad()
def heldout_loss(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 256) -> float:
    """The SFT loss (mean NLL per response token) of ``model`` on held-out text.

    ``prompts`` and ``responses``: non-empty lists of strings of one length (``sentiment.check_texts``);
    ``batch_size``: an integer >= 1."""
    check_model("model", model)
    prompts, responses = check_corpus((prompts, responses))
    batch_size = check_positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        p = lm.encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        r = lm.encode_responses(tokenizer, responses[i:i + batch_size], device=device)
        total += -lm.token_logprobs(model, *p, *r).sum().item()
        count += int(r[1].sum())
    return total / count


def check_corpus(data) -> tuple[list[str], list[str]]:
    """``data`` as ``(prompts, responses)``, two lists of strings of equal length, or a clear error."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be (prompts, responses), two lists of strings, got {type(data).__name__}"
                        f"{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}")
    prompts, responses = sentiment.check_texts("prompts", data[0]), sentiment.check_texts("responses", data[1])
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must be of equal length, got {len(prompts)} and {len(responses)}")
    return prompts, responses


# ------------------------------------------------------------------------------------ the trainer

@dataclass(frozen=True, kw_only=True)
class SFTConfig(Config):
    """SFT: ``steps`` AdamW steps (learning rate ``lr``, annealed linearly to 0), each on
    ``batch_size`` (prompt, response) pairs drawn at random from the corpus (at most ``MAX_BATCH_SIZE``, 4096),
    reproducibly from ``seed``."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        self.check("steps", check_positive_int)
        self.check("batch_size", check_positive_int)
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be <= {MAX_BATCH_SIZE} (MAX_BATCH_SIZE), got {self.batch_size}")
        self.check("lr", check_positive)
        self.check("seed", check_seed)
        self.check("progress", check_bool)


def train(data, config: SFTConfig | None = None, *, model, tokenizer, **overrides) -> TrainResult:
    """Phase 1: AdamW on L_SFT over random mini-batches of (prompt, response) text, ``model`` trained in place.

    ``data`` is ``(prompts, responses)``, two lists of strings of one length (what
    ``SentimentTask.sft_corpus`` returns); ``model`` the causal LM and ``tokenizer`` its tokenizer.
    Settings: those of ``SFTConfig``, as keywords or a ``config``. Returns a ``TrainResult`` whose
    ``model`` is ``model``; logs ``loss`` per step. Only the parameters the caller left
    trainable (``requires_grad=True``) are trained, and ``model`` is handed back in the
    train/eval mode it came in, also after an error or an interrupt (``TrainingInterrupted``).
    Refused: a model with no trainable parameter (``ValueError``) or with float16 parameters
    (``TypeError``: allowed are float32, float64 and bfloat16, ``check_model``). Runs with gradients on and
    float32 as the default dtype (``trainer.training_scope``), inside a caller's ``torch.no_grad()`` too.
    """
    cfg = make_config(SFTConfig, config, **overrides)
    prompts, responses = check_corpus(data)
    check_trainable("model", model)
    history = History()
    result = TrainResult(model, history, cfg)
    with kept_as_found(model), training_scope(cfg.seed), run_guard(lambda: result):
        device = next(model.parameters()).device
        P, Pm = lm.encode_prompts(tokenizer, prompts, device)
        R, Rm = lm.encode_responses(tokenizer, responses, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        for _ in progress(range(cfg.steps), cfg.progress, desc="sft"):
            with atomic():
                with Timer() as timer:
                    idx = torch.randint(len(prompts), (cfg.batch_size,), generator=gen).to(device)
                    loss = sft_loss(model, P[idx], Pm[idx], R[idx], Rm[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                history.log(loss=loss, seconds=timer.seconds)
    return result
