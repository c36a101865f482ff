"""Chapters 4 to 6: the toy controlled-sentiment task, its word-level tokenizer and a diversity metric.

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
  ``true_reward(x, y)``, ``true_rewards(xs, ys)``, ``words``; the word lists ``POSITIVE``,
  ``NEGATIVE``, ``NEUTRAL``, ``ITEMS``, ``ASPECTS`` and the templates ``PROMPTS``, ``RESPONSES``.
- ``build_tokenizer(task)``: word-level tokenizer (``tokenizers``), pad/eos/unk set (``SPECIAL``).
- ``check_texts(name, texts)``: a list of strings, not a string (every entry point that takes texts).
- ``distinct_n``: the fraction of distinct n-grams in a set of responses (diversity).
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

import torch

from .utils import check_positive_int

__all__ = ["SentimentTask", "build_tokenizer", "check_texts", "distinct_n", "POSITIVE", "NEGATIVE", "NEUTRAL",
           "ITEMS", "ASPECTS", "PROMPTS", "RESPONSES", "SPECIAL", "MAX_PROMPTS"]

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


def distinct_n(responses: list[str], n: int = 2) -> float:
    """Distinct-n: the number of distinct word n-grams over the total number of n-grams (1 = all different)."""
    check_positive_int("n", n)
    responses = check_texts("responses", responses)
    grams = [tuple(words[i:i + n]) for r in responses for words in [r.split()]
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
