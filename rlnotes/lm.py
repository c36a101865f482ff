"""Chapters 4 and 5: a small causal language model, its tokenizer and a toy task with a known reward.

The task mirrors the DPO paper's controlled-sentiment experiment at toy scale. A prompt x is a
short review opener ("review of the movie :"), a response y a short review ("the story was
great but slow ."). The hidden ground-truth reward is

    r*(x, y) = clip(#distinct positive words - #distinct negative words, -2, 2)
               - (#repeated tokens) - [y does not end with "."]              (eq. lm-rstar)

A review can only be so glowing (the cap), a word said twice earns nothing the second time
and costs one point (repetition), and a review that trails off costs one point. The SFT
corpus is fluent, diverse, of mixed sentiment and never repeats a word, so a reward model
fitted on pi^SFT's samples never sees a repetition: that is the gap that degenerate text
("great great great great .") can game.

Public API (stable; chapter 5 uses it):

- ``SentimentTask``: ``prompts(n, seed, split)``, ``prompt_pool(split)``, ``sft_corpus(n, seed)``,
  ``true_reward(x, y)``, ``true_rewards(xs, ys)``, ``words``; ``POSITIVE``/``NEGATIVE`` word lists.
- ``build_tokenizer(task)``: word-level tokenizer (``tokenizers``), pad/eos/unk set.
- ``tiny_gpt2(tokenizer, ...)``: a ``GPT2LMHeadModel`` from a config (no download).
- ``load_causal_lm(name_or_path)`` / ``save_pretrained(model, tokenizer, path)``: scale-up path.
- ``encode_prompts`` (left-padded) / ``encode_responses`` (right-padded, EOS appended) /
  ``decode_responses``.
- ``response_logits``, ``token_logprobs`` (prompt and padding masked), ``sequence_logprob``.
- ``sample``: batched sampling with temperature, KV cache and a seeded ``torch.Generator``.
- ``distinct_n``: the fraction of distinct n-grams in a set of responses (diversity).
- ``get_device``: CUDA, then MPS, then CPU (from ``rlnotes.utils``).
"""

from __future__ import annotations

import contextlib
import inspect
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .utils import check_positive, check_positive_int, get_device

__all__ = ["SentimentTask", "build_tokenizer", "tiny_gpt2", "load_causal_lm", "save_pretrained",
           "encode_prompts", "encode_responses", "decode_responses", "response_logits",
           "token_logprobs", "sequence_logprob", "sample", "distinct_n", "get_device"]

POSITIVE = ("great", "good", "wonderful", "lovely", "fun", "brilliant", "charming", "superb")
NEGATIVE = ("bad", "boring", "awful", "dull", "poor", "terrible", "weak", "messy")
NEUTRAL = ("long", "short", "simple", "quiet", "new", "familiar", "modern", "slow")
ITEMS = ("movie", "book", "album", "game", "show", "phone", "hotel", "cafe", "camera", "laptop")
ASPECTS = ("story", "ending", "sound", "price", "design", "cast", "pace", "style", "service", "screen")
PROMPTS = ("review of the {item} :", "my thoughts on the {item} :", "what i think of this {item} :",
           "{item} review :", "a few words on the {item} :", "so , the {item} :")
# Response templates: {a},{b},{c} are adjectives, {n},{m} aspects, {i} the prompt's item.
RESPONSES = (
    "it was {a} .", "it was {a} and {b} .", "the {n} was {a} .", "the {n} is {a} but {b} .",
    "{a} {n} , {b} {m} .", "i found it {a} .", "quite {a} overall .", "{a} but {b} .",
    "a {a} {i} .", "the {n} felt {a} .", "{a} , {b} and {c} .", "overall a {a} {i} .",
    "honestly {a} .", "the {i} is {a} .", "{a} {n} and {b} {m} .", "not much to say , {a} .",
)
SPECIAL = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class SentimentTask:
    """The toy controlled-sentiment task: prompts, an SFT corpus and the true reward r* (eq. lm-rstar).

    ``cap`` bounds the sentiment score, ``repeat_penalty`` is what each repeated token costs,
    ``unfinished_penalty`` what a response that does not end with a full stop costs.
    """

    cap: float = 2.0
    repeat_penalty: float = 1.0
    unfinished_penalty: float = 1.0
    max_response_tokens: int = 8

    @property
    def words(self) -> list[str]:
        """Every word the task can produce (the tokenizer's vocabulary, specials excluded)."""
        vocab = set(POSITIVE + NEGATIVE + NEUTRAL + ITEMS + ASPECTS)
        for template in PROMPTS + RESPONSES:
            vocab.update(w for w in template.split() if not w.startswith("{"))
        return sorted(vocab)

    def prompt_pool(self, split: str = "train") -> list[str]:
        """All prompts of a split: ``"test"`` holds out one (template, item) pair in five, ``"train"`` the rest.

        Every template and every item appears in both splits; only their combinations differ.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return [p.format(item=item) for i, p in enumerate(PROMPTS) for j, item in enumerate(ITEMS)
                if ((i + j) % 5 == 0) == (split == "test")]

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        """``n`` prompts x drawn uniformly (with replacement) from a split's pool, reproducibly from ``seed``."""
        check_positive_int("n", n)
        pool, rng = self.prompt_pool(split), random.Random(seed)
        return [rng.choice(pool) for _ in range(n)]

    def _response(self, prompt: str, rng: random.Random) -> str:
        item = next((w for w in prompt.split() if w in ITEMS), ITEMS[0])
        adjectives = rng.sample([rng.choice(group) for group in (POSITIVE, NEGATIVE, NEUTRAL)
                                 for _ in range(2)], 6)
        adjectives = list(dict.fromkeys(adjectives))  # distinct words only: the corpus never repeats
        aspects = rng.sample(ASPECTS, 2)
        return rng.choice(RESPONSES).format(a=adjectives[0], b=adjectives[1], c=adjectives[2],
                                            n=aspects[0], m=aspects[1], i=item)

    def sft_corpus(self, n: int, seed: int, split: str = "train") -> tuple[list[str], list[str]]:
        """``n`` fluent (prompt, response) pairs of mixed sentiment: the SFT data, as two lists."""
        prompts = self.prompts(n, seed, split)
        rng = random.Random(seed + 1)
        return prompts, [self._response(x, rng) for x in prompts]

    def true_reward(self, prompt: str, response: str) -> float:
        """r*(x, y) of eq. (lm-rstar): capped distinct sentiment, minus repeats, minus an unfinished ending."""
        words = response.split()
        distinct = set(words)
        score = sum(w in POSITIVE for w in distinct) - sum(w in NEGATIVE for w in distinct)
        repeated = len(words) - len(distinct)
        unfinished = not words or words[-1] != "."
        return float(max(-self.cap, min(self.cap, score)) - self.repeat_penalty * repeated
                     - self.unfinished_penalty * unfinished)

    def true_rewards(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """r* for each (prompt, response) pair, as a float tensor [B]."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length, "
                             f"got {len(prompts)} and {len(responses)}")
        return torch.tensor([self.true_reward(x, y) for x, y in zip(prompts, responses)])


def build_tokenizer(task: SentimentTask):
    """A word-level tokenizer over the task's vocabulary, built with ``tokenizers`` (no download).

    Wrapped as a ``transformers`` fast tokenizer (``TokenizersBackend`` in transformers 5) with
    ``<pad>``, ``<eos>`` and ``<unk>`` set, so it batches, saves and loads like any other.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL.values()) + task.words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 32,
              seed: int = 0, activation: str = "gelu_pytorch_tanh"):
    """A freshly initialised ``GPT2LMHeadModel`` sized for a laptop CPU (about 0.1 M parameters).

    The weights come from ``seed`` alone and leave the global RNG untouched. ``activation`` is
    the MLP's GELU: ``"gelu_pytorch_tanh"`` (default) is GPT-2's tanh approximation as one fused
    kernel, several times faster than ``"gelu_new"`` (GPT-2's original, the same formula as a
    composition of Python-level tensor operations), which agrees with it to float rounding.
    Attention uses PyTorch's fused ``scaled_dot_product_attention`` (``"sdpa"``). Scaling up to
    GPT-2 small: ``n_layer=12, n_embd=768, n_head=12``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import ACT2CLS

    if activation not in ACT2CLS:
        raise ValueError(f"activation must be one of {sorted(ACT2CLS)}, got {activation!r}")
    for name, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head),
                        ("n_positions", n_positions)):
        check_positive_int(name, value)
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function=activation, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):  # seed this initialisation only, not the caller's RNG
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def load_causal_lm(name_or_path: str | Path, device=None):
    """The scale-up path: any ``transformers`` causal LM and its tokenizer, by hub name or folder.

    A tokenizer without a pad token gets its EOS token as pad (as GPT-2 needs); masks, not pad
    ids, mark padding everywhere in rlnotes, so the two may coincide.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path).to(get_device(device))
    return model, tokenizer


def save_pretrained(model, tokenizer, path: str | Path) -> None:
    """Save a model and its tokenizer to one folder, loadable again with ``load_causal_lm``."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the prompts, LEFT-padded to one length: ([B, P], [B, P])."""
    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(get_device(device)), mask.to(get_device(device))


def encode_responses(tokenizer, responses: list[str], max_len: int | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the responses with EOS appended, RIGHT-padded: ([B, T], [B, T]).

    Responses are encoded with a leading space, so byte-level BPE tokenizers (GPT-2) see the
    same word boundary as after a prompt. ``max_len`` truncates (EOS included in the count).
    """
    if not responses:
        raise ValueError("responses must be a non-empty list of strings")
    rows = [tokenizer(" " + r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for r in responses]
    if max_len is not None:
        rows = [r[:check_positive_int("max_len", max_len)] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(get_device(device)), mask.to(get_device(device))


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each response: tokens under the mask, EOS and padding dropped."""
    out = []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m and t != tokenizer.eos_token_id]
        out.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return out


def _joint(prompt_ids, prompt_mask, response_ids, response_mask):
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask,
                    output_hidden_states: bool = False):
    """Logits [B, T, V] of the distributions that predict each response token (position P-1+t).

    With ``output_hidden_states`` also returns the last layer's hidden states at those
    positions, [B, T, H] (the value head's input), as a pair (logits, hidden).
    """
    ids, mask, positions = _joint(prompt_ids, prompt_mask, response_ids, response_mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                output_hidden_states=output_hidden_states)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    logits = out.logits[:, P - 1:P + T - 1].float()
    if output_hidden_states:
        return logits, out.hidden_states[-1][:, P - 1:P + T - 1]
    return logits


def token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                   temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for each response token, [B, T], and exactly 0 where the mask is 0."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    logp = F.log_softmax(logits / check_positive("temperature", temperature), dim=-1)
    logp = logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    return logp * response_mask.to(logp.dtype)


def stack_pairs(batch: dict, pad_id: int):
    """A batch of B preference pairs as ONE batch of 2B sequences, [x; y_w] then [x; y_l].

    ``batch`` holds ``prompt_ids/prompt_mask`` and ``chosen_ids/chosen_mask``,
    ``rejected_ids/rejected_mask``; the two response sides are right-padded to a common width.
    Returns (prompt_ids, prompt_mask, response_ids, response_mask), so that one forward pass
    scores both responses of every pair (the reward model of chapter 4, DPO in chapter 5).
    """
    width = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])

    def pad(x, value):
        return F.pad(x, (0, width - x.shape[1]), value=value)

    return (batch["prompt_ids"].repeat(2, 1), batch["prompt_mask"].repeat(2, 1),
            torch.cat([pad(batch["chosen_ids"], pad_id), pad(batch["rejected_ids"], pad_id)]),
            torch.cat([pad(batch["chosen_mask"], 0), pad(batch["rejected_mask"], 0)]))


def sequence_logprob(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) over the response tokens (prompt, padding masked), [B]."""
    return token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask).sum(dim=1)


def _cache_kwargs(model, out) -> dict:
    """The KV cache of ``out`` as the keyword ``model`` takes: ``cache`` in recent transformers 5
    releases, ``past_key_values`` before (as on Colab images that still ship transformers 4)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _last_logits_kwargs(model) -> dict:
    """Ask for the last position's logits only, where the model can (``logits_to_keep`` in
    transformers >= 4.50): a prompt's other positions would cost B x P x V floats for nothing."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _select_rows(cache, rows: torch.Tensor):
    """Keep only batch ``rows`` of a KV cache (a ``Cache`` object, or transformers 4's tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return tuple(tuple(t[rows] for t in layer) for layer in cache)


@torch.no_grad()
def sample(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens: int = 8, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample y ~ pi(.|x)^(1/temperature) for a batch of left-padded prompts, with the KV cache.

    Returns (response_ids [B, T], response_mask [B, T]): the mask covers the tokens up to and
    including the first EOS; after it come pad ids under mask 0. Seeded by ``generator``
    (on the model's device), so the same generator state gives the same samples.

    Work: one forward pass over the prompts (last position's logits only), then one pass per new
    token but the last. Rows that have emitted EOS leave the forward batch and the KV cache once
    they are a quarter of it (copying the cache costs more than a few rows' compute); at least
    two rows stay, so that the matrix products round as they do for the whole batch and the
    samples do not depend on which rows finished. The draw itself always covers all B rows, so
    the generator advances the same way whatever finished. Stops when every row has emitted EOS
    (T <= ``max_new_tokens``). On a CUDA GPU with bf16 support the forward passes run under bf16
    autocast (the softmax in float32).
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive("temperature", temperature)
    B, P, device = prompt_ids.shape[0], prompt_ids.shape[1], prompt_ids.device
    mask = torch.cat([prompt_mask, prompt_mask.new_zeros(B, max_new_tokens)], dim=1)  # filled in as tokens come
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    next_pos = positions[:, -1:] + 1
    extra = _last_logits_kwargs(model)
    with _autocast(device):
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                    **extra)
    logits = out.logits[:, -1].float()                   # [B, V]; rows that finished keep stale values
    rows = torch.arange(B, device=device)                # the rows in the forward batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    ids, alive = [], []
    for t in range(max_new_tokens):
        probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = token.masked_fill(done, tokenizer.pad_token_id)
        ids.append(token)
        alive.append(~done)
        done = done | (token == tokenizer.eos_token_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        cache = _cache_kwargs(model, out)
        running = ~done[rows]
        if len(rows) > 2 and 4 * int(running.sum()) <= 3 * len(rows):  # a quarter finished: drop them
            keep = running.nonzero().squeeze(1)
            if len(keep) < 2:
                keep = torch.cat([keep, (~running).nonzero().squeeze(1)[:2 - len(keep)]])
            rows = rows[keep]
            cache = {k: _select_rows(v, keep) for k, v in cache.items()}
        mask[:, P + t] = 1
        whole = len(rows) == B                           # no row dropped yet: no gathers needed
        with _autocast(device):
            out = model(input_ids=(token if whole else token[rows]).unsqueeze(1),
                        attention_mask=mask[:, :P + t + 1] if whole else mask[rows, :P + t + 1],
                        position_ids=(next_pos if whole else next_pos[rows]) + t, use_cache=True, **cache, **extra)
        if whole:
            logits = out.logits[:, -1].float()
        else:
            logits[rows] = out.logits[:, -1].float()
    return torch.stack(ids, dim=1), torch.stack(alive, dim=1).long()


def _autocast(device: torch.device):
    """bf16 autocast on a CUDA GPU that supports it; a no-op context elsewhere (CPU runs in float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distinct_n(responses: list[str], n: int = 2) -> float:
    """Distinct-n: the number of distinct word n-grams over the total number of n-grams (1 = all different)."""
    check_positive_int("n", n)
    grams = [tuple(words[i:i + n]) for r in responses for words in [r.split()]
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
