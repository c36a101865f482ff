"""Chapter 4, phase 1: supervised fine-tuning (SFT) of a causal language model.

pi^SFT maximises the likelihood of demonstration responses y given prompts x, token by token:
L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t) (eq. rlhf-sft). The result is chapter 4's
reference policy pi_ref, the starting point of every method after it.

"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import lm, sentiment
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, check_model, check_trainable,
                      kept_as_found, make_config, progress, run_guard, training_scope)
from .utils import check_positive, check_positive_int, check_seed

# The largest batch_size (texts per SFT step, pairs per reward-model step): the book uses at most 64 and the tests
# 1000; at 4096 a step of the toy model takes about a second on a CPU, while 10**6 runs for minutes per step
# before the allocator fails.
MAX_BATCH_SIZE = 4096


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
