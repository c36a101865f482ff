"""Chapters 4 to 6: sampling responses y ~ pi(.|x)^(1/temperature) from a causal LM, batched, seeded, with the KV cache.

Public API: ``sample(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens, temperature, generator, k)``;
the cache work lives in ``rlnotes.kvcache``, the argument checks in ``rlnotes.lm``.
"""

from __future__ import annotations

import torch

from .kvcache import cache_kwargs, last_logits_kwargs, repeat_rows, select_rows, with_room
from .lm import check_context, check_prompts, check_temperature, special_id
from .models import autocast, check_module
from .utils import check_positive_int

__all__ = ["sample", "MAX_SAMPLES_PER_PROMPT"]

# The largest k (samples per prompt): the book draws at most 8 and the tests 16 (GRPO's and RLOO's groups);
# at 1024 a batch of prompts is sampled in seconds on the toy model, while k = 10**6 would copy each
# prompt's KV cache a million times and run for minutes before the allocator fails.
MAX_SAMPLES_PER_PROMPT = 1024


@torch.no_grad()
def sample(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens: int = 8, temperature: float = 1.0,
           generator: torch.Generator | None = None, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample y ~ pi(.|x)^(1/temperature) for a batch of left-padded prompts, with the KV cache;
    ``k`` samples per prompt, prompt-major (x_1's k samples, then x_2's, ...; B below is then k
    times the number of prompts), each prompt's pass run once and its cache repeated.

    Returns (response_ids [B, T], response_mask [B, T]): the mask covers the tokens up to and
    including the first EOS; after it come pad ids under mask 0. Seeded by ``generator``
    (on the model's device), so the same generator state gives the same samples.

    Work: one forward pass over the prompts (last position's logits only), then one pass per new
    token but the last, each writing its keys and values into room left in the cache
    (``with_room``) instead of copying the whole cache to append them. Rows that have emitted EOS
    leave the forward batch and the KV cache once they are a quarter of it (copying the cache
    costs more than a few rows' compute); at least two rows stay, so that the matrix products
    round as they do for the whole batch and the samples do not depend on which rows finished. The
    draw itself always covers all B rows, so the generator advances the same way whatever finished.
    Stops when every row has emitted EOS (T <= ``max_new_tokens``). On a CUDA GPU with bf16 support
    the forward passes run under bf16 autocast (the softmax in float32).

    Refused: prompts that are not LEFT-padded (as ``encode_prompts`` makes them), a ``prompt_mask``
    not of 0s and 1s, ids that are not integers in [0, vocabulary), a ``temperature`` below
    ``MIN_TEMPERATURE`` (1e-6), a tokenizer without a pad or an EOS token, prompt +
    ``max_new_tokens`` past the model's context, and ``k`` above ``MAX_SAMPLES_PER_PROMPT`` (1024).
    """
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    temperature = check_temperature(temperature)
    k = check_positive_int("k", k)
    if k > MAX_SAMPLES_PER_PROMPT:
        raise ValueError(f"k must be <= {MAX_SAMPLES_PER_PROMPT} (MAX_SAMPLES_PER_PROMPT, samples per prompt), got {k}")
    check_module("model", model)
    check_prompts(model, prompt_ids, prompt_mask)
    pad_id, eos_id = special_id(tokenizer, "pad"), special_id(tokenizer, "eos")
    # every token but the last sampled one is fed back: the positions run to prompt + max_new_tokens - 1
    check_context(model, int(prompt_mask.sum(1).max()) + max_new_tokens - 1)
    P, device = prompt_ids.shape[1], prompt_ids.device
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    extra = last_logits_kwargs(model)
    with autocast(device):
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                    **extra)
    cache = {name: with_room(repeat_rows(c, k) if k > 1 else c, max_new_tokens)
             for name, c in cache_kwargs(model, out).items()}
    logits = out.logits[:, -1].float().repeat_interleave(k, 0)  # [B, V]; rows that finished keep stale values
    prompt_mask, next_pos = prompt_mask.repeat_interleave(k, 0), positions[:, -1:].repeat_interleave(k, 0) + 1
    B = prompt_mask.shape[0]
    mask = torch.cat([prompt_mask, prompt_mask.new_zeros(B, max_new_tokens)], dim=1)  # filled in as tokens come
    rows = torch.arange(B, device=device)                # the rows in the forward batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ids, alive = [], []
    for t in range(max_new_tokens):
        probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = token.masked_fill(done, pad_id)
        ids.append(token)
        alive.append(~done)
        done = done | (token == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        running = ~done[rows]
        if len(rows) > 2 and 4 * int(running.sum()) <= 3 * len(rows):  # a quarter finished: drop them
            keep = running.nonzero().squeeze(1)
            if len(keep) < 2:
                keep = torch.cat([keep, (~running).nonzero().squeeze(1)[:2 - len(keep)]])
            rows = rows[keep]
            cache = {k: select_rows(v, keep) for k, v in cache.items()}
        mask[:, P + t] = 1
        whole = len(rows) == B                           # no row dropped yet: no gathers needed
        with autocast(device):
            out = model(input_ids=(token if whole else token[rows]).unsqueeze(1),
                        attention_mask=mask[:, :P + t + 1] if whole else mask[rows, :P + t + 1],
                        position_ids=(next_pos if whole else next_pos[rows]) + t, use_cache=True, **cache, **extra)
        if whole:
            logits = out.logits[:, -1].float()
        else:
            logits[rows] = out.logits[:, -1].float()
        cache = cache_kwargs(model, out)
    return torch.stack(ids, dim=1), torch.stack(alive, dim=1).long()
