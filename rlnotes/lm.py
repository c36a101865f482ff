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
- ``response_logits``, ``token_logprobs`` (prompt and padding masked), ``sequence_logprob``;
  ``logprobs_from_logits``: the one home of log pi(y_t) from logits (gather of log-softmax).
- ``check_texts(name, texts)`` / ``check_context(model, length)`` / ``check_temperature``: the
  argument checks that the entry points share (a list of strings, not a string; prompt + response
  within the context; a temperature >= ``MIN_TEMPERATURE``).
- ``sample``: batched sampling with temperature (>= ``MIN_TEMPERATURE``), KV cache and a seeded
  ``torch.Generator``.
- ``distinct_n``: the fraction of distinct n-grams in a set of responses (diversity).
- ``get_device``: CUDA, then MPS, then CPU (from ``rlnotes.utils``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .utils import check_binary, check_positive, check_positive_int, check_seed, get_device

__all__ = ["SentimentTask", "build_tokenizer", "tiny_gpt2", "load_causal_lm", "save_pretrained",
           "encode_prompts", "encode_responses", "decode_responses", "response_logits",
           "logprobs_from_logits", "token_logprobs", "sequence_logprob", "sample", "distinct_n",
           "check_texts", "check_context", "check_temperature", "get_device", "bf16_hardware",
           "MIN_TEMPERATURE", "MAX_PROMPTS", "BARE_HUB_IDS"]

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
# The smallest temperature: logits / temperature must stay finite in float32 (largest 3.4e38), and at
# 1e-6 sampling is already greedy for any logit gap above ~1e-4 (a ratio of e^100 or more).
MIN_TEMPERATURE = 1e-6
MAX_PROMPTS = 10**6  # the most prompts (and SFT pairs) SentimentTask draws in one call (pools of 48 and 12)


def check_texts(name: str, texts) -> list[str]:
    """Return ``texts`` as a list of strings, or raise naming the argument ``name``.

    A single string is refused (TypeError) rather than split into characters, and so are
    non-string items; an empty list is refused with a ValueError.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__} "
                        f"(for one text, pass [{name}])")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{name} must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__} {text!r}")
    return texts


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

    def __post_init__(self):
        for name in ("cap", "repeat_penalty", "unfinished_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        check_positive_int("max_response_tokens", self.max_response_tokens)

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
        """``n`` prompts x drawn uniformly (with replacement) from a split's pool, reproducibly from ``seed``
        (any integer >= 0: the trainers pass ``seed * 100_003 + step``, which may pass 2**63).

        ``n`` is at most ``MAX_PROMPTS`` (a million): the pools hold 48 and 12 prompts, so more only
        repeats them, and a mistyped ``10**9`` would run for minutes and fill the memory.
        """
        n = check_positive_int("n", n)
        if n > MAX_PROMPTS:
            raise ValueError(f"n must be <= {MAX_PROMPTS} (MAX_PROMPTS; the pool holds "
                             f"{len(self.prompt_pool(split))} distinct prompts, drawn with replacement), got {n}")
        pool, rng = self.prompt_pool(split), random.Random(check_positive_int("seed", seed, 0))
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
        rng = random.Random(check_positive_int("seed", seed, 0) + 1)
        return prompts, [self._response(x, rng) for x in prompts]

    def true_reward(self, prompt: str, response: str) -> float:
        """r*(x, y) of eq. (lm-rstar): capped distinct sentiment, minus repeats, minus an unfinished ending."""
        for name, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a string, got {type(text).__name__} {text!r}")
        words = response.split()
        distinct = set(words)
        score = sum(w in POSITIVE for w in distinct) - sum(w in NEGATIVE for w in distinct)
        repeated = len(words) - len(distinct)
        unfinished = not words or words[-1] != "."
        return float(max(-self.cap, min(self.cap, score)) - self.repeat_penalty * repeated
                     - self.unfinished_penalty * unfinished)

    def true_rewards(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """r* for each (prompt, response) pair, as a float tensor [B]."""
        prompts, responses = check_texts("prompts", prompts), check_texts("responses", responses)
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length, "
                             f"got {len(prompts)} and {len(responses)}")
        return torch.tensor([self.true_reward(x, y) for x, y in zip(prompts, responses)])


def build_tokenizer(task: SentimentTask):
    """A word-level tokenizer over the task's vocabulary, built with ``tokenizers`` (no download).

    Wrapped as a ``transformers`` fast tokenizer (``TokenizersBackend`` in transformers 5) with
    ``<pad>``, ``<eos>`` and ``<unk>`` set, so it batches, saves and loads like any other.
    """
    if not isinstance(getattr(task, "words", None), (list, tuple)):
        raise TypeError(f"task must be a SentimentTask (a task with a .words list), got {type(task).__name__}")
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

    The weights come from ``seed`` alone (an integer in [0, 2**63), ``utils.check_seed``) and leave
    the global RNG untouched. ``activation`` is the MLP's GELU: ``"gelu_pytorch_tanh"`` (default)
    is GPT-2's tanh approximation as one fused kernel, several times faster than ``"gelu_new"``
    (GPT-2's original, the same formula as a composition of Python-level tensor operations),
    which agrees with it to float rounding.
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
    seed = check_seed("seed", seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function=activation, attn_implementation="sdpa")
    from .trainer import rng_scope

    with rng_scope(seed):  # the weights from ``seed``; the caller's generator is left as it was
        return GPT2LMHeadModel(config)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# The hub's causal LMs named without an org (its legacy ids); every other hub model is "org/name".
BARE_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt", "ctrl",
                "xlnet-base-cased", "xlnet-large-cased")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds ``repo_id``'s config.json (a lookup on disk, no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ImportError, ValueError):
        return False


def _local_folder(name_or_path) -> Path | None:
    """The folder ``name_or_path`` names, checked, or None for a hub id (``gpt2``, ``org/model``).

    It names a folder when it is a ``Path``, exists, starts with ``.``, ``~`` or a separator,
    does not have the form of a hub id, is ``dir/name`` with ``dir`` an existing folder, or is a
    name without a ``/`` that is neither one of the hub's ``BARE_HUB_IDS`` nor in the local hub
    cache (``my_saved_model``: a folder that is not there, not a hub id).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a hub id or a folder (str or Path), got {name_or_path!r}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    local = (isinstance(name_or_path, os.PathLike) or path.exists() or text.startswith((".", "~", os.sep))
             or (os.altsep is not None and os.altsep in text) or not _HUB_ID.fullmatch(text)
             or ("/" in text and Path(text.split("/")[0]).is_dir())
             or ("/" not in text and text not in BARE_HUB_IDS and not _in_hub_cache(text)))
    if not local:
        return None
    if not path.exists():
        hub = "" if "/" in text or not _HUB_ID.fullmatch(text) else (
            "; a hub model is named 'org/name' (e.g. 'openai-community/gpt2') or is one of "
            + ", ".join(BARE_HUB_IDS))
        raise ValueError(f"name_or_path: no such folder {text!r} (resolved to {path.resolve()}){hub}")
    if not path.is_dir():
        raise ValueError(f"name_or_path: {text!r} is a file; give the folder save_pretrained wrote")
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer files (" + ", ".join(_TOKENIZER_FILES) + ")")
    if missing:
        raise ValueError(f"name_or_path: folder {text!r} is not a saved model and tokenizer: it has no "
                         + " and no ".join(missing) + " (save one with rlnotes.lm.save_pretrained)")
    return path


def load_causal_lm(name_or_path: str | Path, device=None):
    """The scale-up path: any ``transformers`` causal LM and its tokenizer, by hub name or folder.

    A folder (a ``Path``, a string that exists or looks like a path, or a name without ``/`` that
    is neither one of the hub's ``BARE_HUB_IDS`` nor in the local hub cache) is checked first, so
    a mistyped one fails at once ("no such folder"), naming it, instead of being retried as a hub
    id. Hub ids go to ``transformers`` (set ``HF_HUB_OFFLINE=1`` to use only the local cache). Code shipped with a
    model is never run (``trust_remote_code=False``).

    A tokenizer without a pad token gets its EOS token as pad (as GPT-2 needs); masks, not pad
    ids, mark padding everywhere in rlnotes, so the two may coincide.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _local_folder(name_or_path)
    source = name_or_path if folder is None else folder
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False).to(get_device(device))
    return model, tokenizer


def save_pretrained(model, tokenizer, path: str | Path) -> None:
    """Save a model and its tokenizer to one folder, loadable again with ``load_causal_lm``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder (str or Path), got {path!r}")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path {os.fspath(path)!r} is a file: save_pretrained needs a folder")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _special_id(tokenizer, kind: str) -> int:
    """``tokenizer.<kind>_token_id`` ("pad" or "eos"), or a ``ValueError`` naming the attribute to set."""
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


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the prompts, LEFT-padded to one length: ([B, P], [B, P]).

    Every prompt must have at least one token: the response's first token is predicted from
    the prompt's last one. The tokenizer must have a pad token (``ValueError`` otherwise); words
    it encodes as its unknown token are named in one ``UserWarning``.
    """
    prompts = check_texts("prompts", prompts)
    pad_id = _special_id(tokenizer, "pad")
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
    return ids.to(get_device(device)), mask.to(get_device(device))


def encode_responses(tokenizer, responses: list[str], max_len: int | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the responses with EOS appended, RIGHT-padded: ([B, T], [B, T]).

    Responses are encoded with a leading space, so byte-level BPE tokenizers (GPT-2) see the
    same word boundary as after a prompt. ``max_len`` truncates (EOS included in the count).
    The tokenizer must have an EOS and a pad token (``ValueError`` otherwise); words it encodes
    as its unknown token are named in one ``UserWarning``.
    """
    responses = check_texts("responses", responses)
    eos_id, pad_id = _special_id(tokenizer, "eos"), _special_id(tokenizer, "pad")
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
    return ids.to(get_device(device)), mask.to(get_device(device))


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each response: tokens under the mask, EOS and padding dropped."""
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


def _vocab_size(model) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "num_embeddings"):
        return embeddings.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _check_vocab(model, name: str, ids: torch.Tensor) -> None:
    vocab = _vocab_size(model)
    if ids.numel() and vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{name} must be token ids in [0, {vocab}) (the model's vocabulary), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")


def _check_prompts(model, prompt_ids, prompt_mask) -> None:
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
    _check_prompts(model, prompt_ids, prompt_mask)
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


def _joint(prompt_ids, prompt_mask, response_ids, response_mask):
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
    _check_pair(model, prompt_ids, prompt_mask, response_ids, response_mask)
    ids, mask, positions = _joint(prompt_ids, prompt_mask, response_ids, response_mask)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    keep = {"logits_to_keep": T + 1} if _takes_logits_to_keep(type(model)) else {}
    with _autocast(ids.device):
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
    ``selective_log_softmax`` does). Refused (``ValueError``): NaN or +inf logits.
    """
    temperature = check_temperature(temperature)
    if not torch.is_tensor(logits) or not torch.is_tensor(ids) or logits.shape[:-1] != ids.shape:
        raise ValueError("logits must be [..., V] and ids [...] with the same leading shape, got "
                         f"{tuple(getattr(logits, 'shape', ()))} and {tuple(getattr(ids, 'shape', ()))}")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
    if bool((logits.isnan() | logits.isposinf()).any()):  # -inf (a banned token) is allowed, as in kl.sequence_kl
        raise ValueError("logits must not hold NaN or +inf (-inf, a token of probability 0, is allowed)")
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


def stack_pairs(batch: dict, pad_id: int):
    """A batch of B preference pairs as B prompts and 2B responses, y_w then y_l for each prompt.

    ``batch`` holds ``prompt_ids/prompt_mask`` and ``chosen_ids/chosen_mask``,
    ``rejected_ids/rejected_mask``; the two response sides are right-padded to a common width.
    Returns (prompt_ids [B, P], prompt_mask, response_ids [2B, T], response_mask) in the
    prompt-major order of ``group_response_logits``, so that one pass, with each prompt run once,
    scores both responses of every pair (the reward model of chapter 4, DPO in chapter 5).
    """
    width = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])

    def pairs(side: str, value):  # [B, 2, T] -> [2B, T]: row 2i is pair i's y_w, row 2i + 1 its y_l
        chosen, rejected = (F.pad(batch[f"{s}_{side}"], (0, width - batch[f"{s}_{side}"].shape[1]), value=value)
                            for s in ("chosen", "rejected"))
        return torch.stack([chosen, rejected], dim=1).flatten(0, 1)

    return batch["prompt_ids"], batch["prompt_mask"], pairs("ids", pad_id), pairs("mask", 0)


def group_size(prompt_ids: torch.Tensor, response_ids: torch.Tensor) -> int:
    """k, the number of responses per prompt in a prompt-major batch of B prompts and k B responses."""
    k, rest = divmod(len(response_ids), max(len(prompt_ids), 1))
    if rest or k < 1 or len(prompt_ids) == 0:
        raise ValueError(f"response_ids must hold k >= 1 responses per prompt ({len(prompt_ids)} prompts), "
                         f"got {len(response_ids)}")
    return k


def _repeat_rows(cache, k: int):
    """Each batch row of a KV cache k times in a row (a ``Cache`` object, or transformers 4's tuples)."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(k)
        return cache
    return tuple(tuple(t.repeat_interleave(k, 0) for t in layer) for layer in cache)


def _grouped_forward(model, prompt_ids, prompt_mask, response_ids, response_mask, prefill=None):
    """(prompt_out, response_out): ``prefill`` (default ``model``; an LM's body to skip its output
    layer) run once on the B prompts, keeping their KV cache, then ``model`` on the k B responses
    (prompt-major) with each prompt's cache repeated for its k responses."""
    k = len(response_ids) // len(prompt_ids)
    with _autocast(prompt_ids.device):
        first = (prefill or model)(input_ids=prompt_ids, attention_mask=prompt_mask,
                                   position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        cache = {name: _repeat_rows(c, k) for name, c in _cache_kwargs(model, first).items()}
        n_prompt = prompt_mask.sum(1, keepdim=True).repeat_interleave(k, 0)
        rest = model(input_ids=response_ids, attention_mask=torch.cat([prompt_mask.repeat_interleave(k, 0), response_mask], 1),
                     position_ids=n_prompt + (response_mask.cumsum(1) - 1).clamp(min=0), **cache)
    return first, rest


def group_response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """``response_logits`` for k responses per prompt, prompt-major (x_1's k responses, then x_2's, ...),
    with each prompt run once: its KV cache serves its k responses. [k B, T, V], equal to
    ``response_logits`` on the prompts repeated k times (``repeat_interleave``), with (k - 1) / k of
    the prompt tokens' cost saved (DPO's and the reward model's pairs: k = 2)."""
    k = group_size(prompt_ids, response_ids)
    body = getattr(model, "base_model", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if k == 1 or body is model or head is None:  # nothing to share, or no body and head to call apart
        return response_logits(model, prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0),
                               response_ids, response_mask)
    _check_pair(model, prompt_ids, prompt_mask, response_ids, response_mask, k)
    first, rest = _grouped_forward(model, prompt_ids, prompt_mask, response_ids, response_mask, prefill=body)
    with _autocast(prompt_ids.device):  # the output layer on [B, H], 2-D: a [B, 1, H] view would round
        at_prompt = head(first.last_hidden_state[:, -1].contiguous())  # differently when its weight needs grad
    logits = torch.cat([at_prompt.repeat_interleave(k, 0)[:, None], rest.logits[:, :-1].to(at_prompt.dtype)], dim=1)
    return logits if logits.dtype == torch.float64 else logits.float()


def last_hidden(body, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """The last layer's hidden state at each sequence's last token (the response's last, or the
    prompt's last where a response is empty), [k B, H], for k responses per prompt (prompt-major,
    each prompt run once when k > 1). ``body`` is a transformer without its output layer (the
    reward model's ``base_model``). The batch is checked as ``response_logits`` checks it: padding
    sides, token ids, prompt + response within the context (``check_context``)."""
    k = group_size(prompt_ids, response_ids)
    _check_pair(body, prompt_ids, prompt_mask, response_ids, response_mask, k)
    rows = torch.arange(len(response_ids), device=response_ids.device)
    n = response_mask.sum(dim=1)
    if k == 1:
        ids, mask, positions = _joint(prompt_ids, prompt_mask, response_ids, response_mask)
        with _autocast(ids.device):
            hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return hidden[rows, prompt_ids.shape[1] + n - 1]
    first, rest = _grouped_forward(body, prompt_ids, prompt_mask, response_ids, response_mask)
    at_prompt = first.last_hidden_state[:, -1].repeat_interleave(k, 0)
    return torch.where((n > 0)[:, None], rest.last_hidden_state[rows, (n - 1).clamp(min=0)], at_prompt)


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
    return {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}


def _select_rows(cache, rows: torch.Tensor):
    """Keep only batch ``rows`` of a KV cache (a ``Cache`` object, or transformers 4's tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return tuple(tuple(t[rows] for t in layer) for layer in cache)


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
    (``_with_room``) instead of copying the whole cache to append them. Rows that have emitted EOS
    leave the forward batch and the KV cache once they are a quarter of it (copying the cache
    costs more than a few rows' compute); at least two rows stay, so that the matrix products
    round as they do for the whole batch and the samples do not depend on which rows finished. The draw itself always covers all B rows, so
    the generator advances the same way whatever finished. Stops when every row has emitted EOS
    (T <= ``max_new_tokens``). On a CUDA GPU with bf16 support the forward passes run under bf16
    autocast (the softmax in float32).

    Refused: prompts that are not LEFT-padded (as ``encode_prompts`` makes them), a ``prompt_mask``
    not of 0s and 1s, ids that are not
    integers in [0, vocabulary), a ``temperature`` below ``MIN_TEMPERATURE`` (1e-6), a tokenizer
    without a pad or an EOS token, and prompt + ``max_new_tokens`` past the model's context.
    """
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    temperature = check_temperature(temperature)
    k = check_positive_int("k", k)
    _check_prompts(model, prompt_ids, prompt_mask)
    pad_id, eos_id = _special_id(tokenizer, "pad"), _special_id(tokenizer, "eos")
    # every token but the last sampled one is fed back: the positions run to prompt + max_new_tokens - 1
    check_context(model, int(prompt_mask.sum(1).max()) + max_new_tokens - 1)
    P, device = prompt_ids.shape[1], prompt_ids.device
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    extra = _last_logits_kwargs(model)
    with _autocast(device):
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                    **extra)
    cache = {name: _with_room(_repeat_rows(c, k) if k > 1 else c, max_new_tokens)
             for name, c in _cache_kwargs(model, out).items()}
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
        cache = _cache_kwargs(model, out)
    return torch.stack(ids, dim=1), torch.stack(alive, dim=1).long()


def active_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with p > 0, i.e. whether its forward pass in train mode
    differs from the one in eval mode (and a no-grad scoring pass cannot stand in for the gradient pass)."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


@functools.lru_cache(maxsize=None)
def _growing_layer():
    """transformers' ``DynamicLayer`` with its keys and values kept in a buffer that has room for more
    positions: ``update`` writes the new ones in place and returns views, where ``DynamicLayer``
    concatenates (a copy of the whole cache, every layer, every step: quadratic in the length).
    None where transformers has no ``DynamicLayer`` (transformers 4)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if n + m > self.room_keys.shape[-2] or self.keys.data_ptr() != self.room_keys.data_ptr():
                # out of room, or keys replaced from outside (e.g. batch_repeat_interleave): grow as DynamicLayer does
                self.keys = self.room_keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = self.room_values = torch.cat([self.values, value_states], dim=-2)
                return self.keys, self.values
            self.room_keys[:, :, n:n + m] = key_states
            self.room_values[:, :, n:n + m] = value_states
            self.keys, self.values = self.room_keys[:, :, :n + m], self.room_values[:, :, :n + m]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            n = self.keys.shape[-2]
            self.room_keys, self.room_values = self.room_keys[indices], self.room_values[indices]
            self.keys, self.values = self.room_keys[:, :, :n], self.room_values[:, :, :n]

    return GrowingLayer


def _with_room(cache, room: int):
    """``cache`` with room for ``room`` more positions in each layer (``_growing_layer``), where its
    layers are plain ``DynamicLayer``s; any other cache is returned as it is."""
    growing = _growing_layer()
    layers = getattr(cache, "layers", None)
    if growing is None or not isinstance(layers, list) or not all(
            type(layer) is growing.__base__ and getattr(layer, "is_initialized", False) for layer in layers):
        return cache
    for layer in layers:
        keys, values = (F.pad(t, (0, 0, 0, room)) for t in (layer.keys, layer.values))  # [B, heads, n + room, d]
        n = layer.keys.shape[-2]
        layer.__class__ = growing
        layer.room_keys, layer.room_values = keys, values
        layer.keys, layer.values = keys[:, :, :n], values[:, :, :n]
    return cache


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(model_class) -> bool:
    """Whether a model class's forward computes its output layer on the last k positions only."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def bf16_hardware(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU with bf16 in hardware (compute capability 8.0 or newer:
    A100, H100, RTX 30xx and later). A T4 (Colab's free GPU, 7.5) answers False, although
    ``torch.cuda.is_bf16_supported()`` says True there: that counts slow software emulation."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def _autocast(device: torch.device):
    """bf16 autocast on a CUDA GPU with bf16 hardware (``bf16_hardware``); float32 elsewhere: on the
    CPU, and on older GPUs such as a T4, where emulated bf16 would be slower than float32."""
    if bf16_hardware(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distinct_n(responses: list[str], n: int = 2) -> float:
    """Distinct-n: the number of distinct word n-grams over the total number of n-grams (1 = all different)."""
    check_positive_int("n", n)
    responses = check_texts("responses", responses)
    grams = [tuple(words[i:i + n]) for r in responses for words in [r.split()]
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
