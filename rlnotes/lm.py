"""Chapters 4 to 6: a causal language model's text in and log-probabilities out.

Public API (stable; chapter 5 uses it):

- ``encode_prompts`` (left-padded) / ``encode_responses`` (right-padded, EOS appended) /
  ``decode_responses``.
- ``response_logits``, ``token_logprobs`` (prompt and padding masked), ``sequence_logprob``;
  ``logprobs_from_logits``: the one home of log pi(y_t) from logits (gather of log-softmax).
- ``group_response_logits`` / ``last_hidden``: k responses per prompt, each prompt run once (its KV cache,
  ``rlnotes.kvcache``, serves its k responses); ``pairs.stack_pairs`` lays preference pairs out that way.
- ``check_context(model, length)`` / ``check_temperature`` / ``check_prompts`` / ``special_id``: the
  argument checks that the entry points share (prompt + response within the context; a temperature >=
  ``MIN_TEMPERATURE``; left-padded prompts; a tokenizer's pad or EOS id).

The toy task and its tokenizer are in ``rlnotes.sentiment``, the models in ``rlnotes.models``, sampling in
``rlnotes.sampling``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .kvcache import cache_kwargs, last_logits_kwargs, repeat_rows
from .models import autocast, check_module, check_tokenizer
from .sentiment import check_texts
from .utils import check_binary, check_positive, check_positive_int, check_tensor, get_device

__all__ = ["encode_prompts", "encode_responses", "decode_responses", "response_logits", "logprobs_from_logits",
           "token_logprobs", "sequence_logprob", "group_response_logits", "last_hidden",
           "group_size", "joint", "vocab_size", "check_context", "check_temperature", "check_prompts", "special_id",
           "MIN_TEMPERATURE"]

MIN_TEMPERATURE = 1e-6   # logits / temperature stays finite in float32; greedy for any gap above ~1e-4


def special_id(tokenizer, kind: str) -> int:
    """``tokenizer.<kind>_token_id`` ("pad" or "eos"), or a ``ValueError`` naming the attribute to set
    (a ``TypeError`` if ``tokenizer`` is not a tokenizer at all, ``models.check_tokenizer``)."""
    check_tokenizer("tokenizer", tokenizer)
    value = getattr(tokenizer, f"{kind}_token_id", None)
    if value is None:
        hint = " (e.g. tokenizer.pad_token = tokenizer.eos_token, as load_causal_lm does)" if kind == "pad" else ""
        raise ValueError(f"tokenizer has no {kind} token (tokenizer.{kind}_token_id is None): "
                         f"set tokenizer.{kind}_token{hint}")
    return value


def _warn_unknown(tokenizer, name: str, texts: list[str], rows: list[list[int]]) -> None:
    """One warning naming the words that the tokenizer could only encode as its unknown token.

    A word-level tokenizer (``build_tokenizer``'s) knows the task's lowercase words only: an accent,
    an emoji, a capital letter or a typo becomes ``<unk>``, which the model cannot tell apart."""
    unk = getattr(tokenizer, "unk_token_id", None)
    hit = [i for i, row in enumerate(rows) if unk is not None and unk in row]
    if not hit:
        return
    words = {}
    for i in hit:
        try:
            spans = tokenizer(texts[i], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except (NotImplementedError, KeyError, TypeError):  # a slow tokenizer has no offsets: name the text
            spans = [(0, len(texts[i]))] * len(rows[i])
        words.update((texts[i][a:b], None) for t, (a, b) in zip(rows[i], spans)
                     if t == unk and texts[i][a:b] != tokenizer.unk_token)
    if words:
        shown = ", ".join(repr(w.strip()) for w in list(words)[:10]) + (", ..." if len(words) > 10 else "")
        warnings.warn(f"{name}: {len(words)} word(s) not in the tokenizer's vocabulary, encoded as "
                      f"{tokenizer.unk_token!r}: {shown} (in {len(hit)} of {len(texts)} texts, first "
                      f"{name}[{hit[0]}])", UserWarning, stacklevel=3)


def _usable_device(device) -> torch.device:
    """``utils.get_device(device)``, refused (``ValueError``) when it names a CUDA or MPS device that this
    machine does not have (torch would fail deep inside, on the first tensor moved there)."""
    device = get_device(device)
    missing = {"cuda": not torch.cuda.is_available(),
               "mps": not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())}
    if missing.get(device.type, False):
        raise ValueError(f"device {str(device)!r} is not available on this machine: use 'cpu', or device=None "
                         "(the best device there is)")
    return device


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the prompts, LEFT-padded to one length: ([B, P], [B, P]).

    Every prompt must have at least one token: the response's first token is predicted from
    the prompt's last one. The tokenizer must have a pad token (``ValueError`` otherwise); words
    it encodes as its unknown token are named in one ``UserWarning``.
    """
    prompts = check_texts("prompts", prompts)
    pad_id = special_id(tokenizer, "pad")
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    _warn_unknown(tokenizer, "prompts", prompts, rows)
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"prompts must each have at least one token: prompts[{empty[0]}] = "
                         f"{prompts[empty[0]]!r} is empty ({len(empty)} empty prompt(s) in all)")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    device = _usable_device(device)
    return ids.to(device), mask.to(device)


def encode_responses(tokenizer, responses: list[str], max_len: int | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the responses with EOS appended, RIGHT-padded: ([B, T], [B, T]).

    Responses are encoded with a leading space, so byte-level BPE tokenizers (GPT-2) see the
    same word boundary as after a prompt. ``max_len`` truncates (EOS included in the count).
    The tokenizer must have an EOS and a pad token (``ValueError`` otherwise); words it encodes
    as its unknown token are named in one ``UserWarning``.
    """
    responses = check_texts("responses", responses)
    eos_id, pad_id = special_id(tokenizer, "eos"), special_id(tokenizer, "pad")
    texts = [" " + r for r in responses]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    _warn_unknown(tokenizer, "responses", texts, rows)
    rows = [row + [eos_id] for row in rows]
    if max_len is not None:
        rows = [r[:check_positive_int("max_len", max_len)] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    device = _usable_device(device)
    return ids.to(device), mask.to(device)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each response: tokens under the mask, EOS and padding dropped."""
    check_tokenizer("tokenizer", tokenizer)
    _check_ids_mask("response", response_ids, response_mask)
    out = []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m and t != tokenizer.eos_token_id]
        out.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return out


def check_context(model, length: int) -> None:
    """Raise ``ValueError`` unless ``length`` tokens (prompt + response) fit the model's context.

    The context is ``config.n_positions`` (GPT-2) or ``config.max_position_embeddings``; past it
    a learned position embedding has no row (an ``index out of range`` deep in torch) and a
    rotary one extrapolates silently. A model whose config names neither is not checked.
    """
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        context = getattr(config, key, None)
        if isinstance(context, int):
            break
    else:
        return
    if length > context:
        raise ValueError(f"prompt + response is {length} tokens, more than the model's context of {context} "
                         f"tokens (config.{key}): shorten the prompts or the responses (max_len, max_new_tokens)")


def _check_ids_mask(name: str, ids, mask) -> None:
    for arg, x in ((f"{name}_ids", ids), (f"{name}_mask", mask)):
        if not torch.is_tensor(x) or x.dim() != 2:
            raise TypeError(f"{arg} must be a 2-D tensor [B, length], got "
                            + (f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__))
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name}_ids must hold integer token ids, got {ids.dtype}")
    if ids.shape != mask.shape:
        raise ValueError(f"{name}_ids and {name}_mask must have the same shape, "
                         f"got {tuple(ids.shape)} and {tuple(mask.shape)}")
    check_binary(f"{name}_mask", mask)  # a mask of 2s would count each token twice in the positions (cumsum)


def vocab_size(model) -> int | None:
    """The number of token ids ``model`` embeds (None if it does not say)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return embeddings.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _check_vocab(model, name: str, ids: torch.Tensor) -> None:
    vocab = vocab_size(model)
    if ids.numel() and vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{name} must be token ids in [0, {vocab}) (the model's vocabulary), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")


def check_prompts(model, prompt_ids, prompt_mask) -> None:
    """Shape, padding side (LEFT, as ``encode_prompts`` makes it) and token ids of a batch of prompts."""
    _check_ids_mask("prompt", prompt_ids, prompt_mask)
    if prompt_ids.shape[0] == 0:
        raise ValueError("prompt_ids must hold at least one prompt, got an empty batch")
    if prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids must hold at least one token per prompt, got width 0")
    if not bool(prompt_mask[:, -1].bool().all()):
        raise ValueError("prompt_mask must be LEFT-padded with a non-empty prompt in every row "
                         "(its last column all 1), as encode_prompts makes it")
    _check_vocab(model, "prompt_ids", prompt_ids)


def _check_pair(model, prompt_ids, prompt_mask, response_ids, response_mask, k: int = 1) -> None:
    """Shapes, padding sides, token ids and context length of a batch of prompts and their
    responses, ``k`` per prompt (prompt-major)."""
    check_prompts(model, prompt_ids, prompt_mask)
    _check_ids_mask("response", response_ids, response_mask)
    if k * prompt_ids.shape[0] != response_ids.shape[0]:
        raise ValueError(f"prompt_ids and response_ids must have the same batch size, "
                         f"got {prompt_ids.shape[0]} and {response_ids.shape[0]}")
    if bool((response_mask[:, 1:].long() > response_mask[:, :-1].long()).any()):
        raise ValueError("response_mask must be RIGHT-padded (ones, then zeros), as encode_responses "
                         "and sample make it")
    _check_vocab(model, "response_ids", response_ids)
    n_prompt = prompt_mask.long().sum(1).repeat_interleave(k)
    check_context(model, int((n_prompt + response_mask.long().sum(1)).max()))


def joint(prompt_ids, prompt_mask, response_ids, response_mask):
    """[x; y] as one sequence: ids, mask, and positions that count real tokens only (padding: 0)."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask,
                    output_hidden_states: bool = False):
    """Logits [B, T, V] of the distributions that predict each response token (position P-1+t).

    Prompts are left-padded and responses right-padded (``encode_prompts``, ``encode_responses``,
    ``sample``), masks of 0s and 1s; prompt + response must fit the model's context (``check_context``). Half and
    bfloat16 logits are returned as float32, float32 and float64 as they are.
    With ``output_hidden_states`` also returns the last layer's hidden states at those
    positions, [B, T, H] (the value head's input), as a pair (logits, hidden).
    The output layer runs on the last T + 1 positions only (``logits_to_keep``, where the model
    takes it), and on a CUDA GPU with bf16 support the pass runs under bf16 autocast.
    """
    check_module("model", model)
    _check_pair(model, prompt_ids, prompt_mask, response_ids, response_mask)
    ids, mask, positions = joint(prompt_ids, prompt_mask, response_ids, response_mask)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    keep = last_logits_kwargs(model, T + 1)
    with autocast(ids.device):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    output_hidden_states=output_hidden_states, **keep)
    logits = out.logits[:, -(T + 1):-1]  # positions P-1 .. P+T-2, whether or not the model kept only T + 1
    if logits.dtype != torch.float64:
        logits = logits.float()  # half and bfloat16 upcast; float32 unchanged
    if output_hidden_states:
        return logits, out.hidden_states[-1][:, P - 1:P + T - 1]
    return logits


def check_temperature(temperature) -> float:
    """Return ``temperature`` as a float, or raise unless it is a number >= ``MIN_TEMPERATURE`` (1e-6).

    Below the floor, logits / temperature can overflow float32 to inf and the softmax gives NaN;
    at the floor, sampling is already greedy for any logit gap above ~1e-4."""
    temperature = check_positive("temperature", temperature)
    if temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} (MIN_TEMPERATURE: below it logits / "
                         f"temperature can overflow to inf; at it sampling is already greedy), got {temperature}")
    return temperature


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t) = log_softmax(logits / temperature)[y_t], [...], and exactly 0 where ``mask`` is 0.

    The one place where rlnotes turns logits [..., V] into the log-probabilities of the tokens
    ``ids`` [...]. Padding is filled with 0 by ``torch.where``, not multiplied by the mask, so a
    -inf logit at a padded position (a banned pad token) gives 0, not NaN (as TRL's
    ``selective_log_softmax`` does). Refused: NaN or +inf logits, ``ids`` outside [0, V) (``ValueError``);
    ``logits`` not a floating tensor, ``ids`` not an integer tensor, ``mask`` not a tensor (``TypeError``).
    """
    temperature = check_temperature(temperature)
    check_tensor("logits", logits)
    check_tensor("ids", ids, "int")
    if mask is not None:
        check_tensor("mask", mask, "any")
    if logits.dim() == 0 or logits.shape[:-1] != ids.shape:
        raise ValueError("logits must be [..., V] and ids [...] with the same leading shape, got "
                         f"{tuple(getattr(logits, 'shape', ()))} and {tuple(getattr(ids, 'shape', ()))}")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
    if bool((logits.isnan() | logits.isposinf()).any()):  # -inf (a banned token) is allowed, as in kl.sequence_kl
        raise ValueError("logits must not hold NaN or +inf (-inf, a token of probability 0, is allowed)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= logits.shape[-1]):
        raise ValueError(f"ids must be token ids in [0, {logits.shape[-1]}) (logits' last dimension), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")
    logp = F.log_softmax(logits / temperature, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if mask is None:
        return logp
    return torch.where(mask.bool(), logp, torch.zeros_like(logp))


def token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                   temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for each response token, [B, T], and exactly 0 where the mask is 0."""
    check_temperature(temperature)
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return logprobs_from_logits(logits, response_ids, response_mask, temperature)


def sequence_logprob(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) over the response tokens (prompt, padding masked), [B]."""
    return token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask).sum(dim=1)


def group_size(prompt_ids: torch.Tensor, response_ids: torch.Tensor) -> int:
    """k, the number of responses per prompt in a prompt-major batch of B prompts and k B responses."""
    k, rest = divmod(len(response_ids), max(len(prompt_ids), 1))
    if rest or k < 1 or len(prompt_ids) == 0:
        raise ValueError(f"response_ids must hold k >= 1 responses per prompt ({len(prompt_ids)} prompts), "
                         f"got {len(response_ids)}")
    return k


def _grouped_forward(model, prompt_ids, prompt_mask, response_ids, response_mask, prefill=None):
    """(prompt_out, response_out): ``prefill`` (default ``model``; an LM's body to skip its output
    layer) run once on the B prompts, keeping their KV cache, then ``model`` on the k B responses
    (prompt-major) with each prompt's cache repeated for its k responses."""
    k = len(response_ids) // len(prompt_ids)
    with autocast(prompt_ids.device):
        first = (prefill or model)(input_ids=prompt_ids, attention_mask=prompt_mask,
                                   position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        cache = {name: repeat_rows(c, k) for name, c in cache_kwargs(model, first).items()}
        n_prompt = prompt_mask.sum(1, keepdim=True).repeat_interleave(k, 0)
        rest = model(input_ids=response_ids,
                     attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1),
                     position_ids=n_prompt + (response_mask.cumsum(1) - 1).clamp(min=0), **cache)
    return first, rest


def group_response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """``response_logits`` for k responses per prompt, prompt-major (x_1's k responses, then x_2's, ...),
    with each prompt run once: its KV cache serves its k responses. [k B, T, V], equal to
    ``response_logits`` on the prompts repeated k times (``repeat_interleave``), with (k - 1) / k of
    the prompt tokens' cost saved (DPO's and the reward model's pairs: k = 2)."""
    check_module("model", model)
    k = group_size(prompt_ids, response_ids)
    body = getattr(model, "base_model", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if k == 1 or body is model or head is None:  # nothing to share, or no body and head to call apart
        return response_logits(model, prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0),
                               response_ids, response_mask)
    _check_pair(model, prompt_ids, prompt_mask, response_ids, response_mask, k)
    first, rest = _grouped_forward(model, prompt_ids, prompt_mask, response_ids, response_mask, prefill=body)
    with autocast(prompt_ids.device):  # the output layer on [B, H], 2-D: a [B, 1, H] view would round
        at_prompt = head(first.last_hidden_state[:, -1].contiguous())  # differently when its weight needs grad
    logits = torch.cat([at_prompt.repeat_interleave(k, 0)[:, None], rest.logits[:, :-1].to(at_prompt.dtype)], dim=1)
    return logits if logits.dtype == torch.float64 else logits.float()


def last_hidden(body, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """The last layer's hidden state at each sequence's last token (the response's last, or the
    prompt's last where a response is empty), [k B, H], for k responses per prompt (prompt-major,
    each prompt run once when k > 1). ``body`` is a transformer without its output layer (the
    reward model's ``base_model``). The batch is checked as ``response_logits`` checks it: padding
    sides, token ids, prompt + response within the context (``check_context``)."""
    check_module("body", body)
    k = group_size(prompt_ids, response_ids)
    _check_pair(body, prompt_ids, prompt_mask, response_ids, response_mask, k)
    rows = torch.arange(len(response_ids), device=response_ids.device)
    n = response_mask.sum(dim=1)
    if k == 1:
        ids, mask, positions = joint(prompt_ids, prompt_mask, response_ids, response_mask)
        with autocast(ids.device):
            hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return hidden[rows, prompt_ids.shape[1] + n - 1]
    first, rest = _grouped_forward(body, prompt_ids, prompt_mask, response_ids, response_mask)
    at_prompt = first.last_hidden_state[:, -1].repeat_interleave(k, 0)
    return torch.where((n > 0)[:, None], rest.last_hidden_state[rows, (n - 1).clamp(min=0)], at_prompt)
