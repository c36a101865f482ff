"""Chapter 4, phase 1: supervised fine-tuning (SFT) of a causal language model.

pi^SFT maximises the likelihood of demonstration responses y given prompts x, token by token:
L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t) (eq. rlhf-sft). The result is chapter 4's
reference policy pi_ref, the starting point of every method after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import lm
from .trainer import (Config, History, Timer, TrainResult, atomic, check_bool, make_config, progress, rng_scope,
                      run_guard)
from .utils import check_positive, check_positive_int


def sft_loss(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """L_SFT = -(1 / #tokens) sum_t log pi(y_t | x, y_<t), over response tokens only (eq. rlhf-sft)."""
    logp = lm.token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return -logp.sum() / response_mask.sum()


@torch.no_grad()
def heldout_loss(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 256) -> float:
    """The SFT loss (mean NLL per response token) of ``model`` on held-out text."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        p = lm.encode_prompts(tokenizer, prompts[i:i + batch_size], device)
        r = lm.encode_responses(tokenizer, responses[i:i + batch_size], device=device)
        total += -lm.token_logprobs(model, *p, *r).sum().item()
        count += int(r[1].sum())
    return total / count


@dataclass(frozen=True, kw_only=True)
class SFTConfig(Config):
    """SFT: ``steps`` AdamW steps (learning rate ``lr``, annealed linearly to 0), each on
    ``batch_size`` (prompt, response) pairs drawn at random from the corpus, reproducibly from ``seed``."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        self.check("steps", check_positive_int)
        self.check("batch_size", check_positive_int)
        self.check("lr", check_positive)
        self.check("seed", check_positive_int, 0)
        self.check("progress", check_bool)


def train_sft(model, tokenizer, prompts: list[str], responses: list[str], config: SFTConfig | None = None,
              **kwargs) -> TrainResult:
    """Phase 1: AdamW on L_SFT over random mini-batches of (prompt, response) text, ``model`` trained in place.

    Arguments: those of ``SFTConfig``, or a ``config``. Returns a ``TrainResult`` whose
    ``model`` is ``model``; logs ``loss`` per step.
    """
    cfg = make_config(SFTConfig, config, **kwargs)
    lm.check_texts("prompts", prompts)
    lm.check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must be of equal length, got {len(prompts)} and {len(responses)}")
    device = next(model.parameters()).device
    P, Pm = lm.encode_prompts(tokenizer, prompts, device)
    R, Rm = lm.encode_responses(tokenizer, responses, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = History()
    result = TrainResult(model, history, cfg)
    model.train()
    with rng_scope(cfg.seed), run_guard(lambda: result, model.eval):
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
