"""Chapter 4, phases 1 and 2 as one call: supervised fine-tuning, preference pairs and a reward model.

- ``prepare(seed=0, ...) -> Prepared``: phases 1 and 2, deterministic and cheap (seconds on a
  CPU): the task (r* is ``task.true_rewards``), ``tokenizer``, ``sft`` (pi^SFT = pi_ref, frozen),
  ``reward_model`` (r_phi, mean zero on pi^SFT's samples), ``train_prefs`` / ``test_prefs``,
  ``eval_prompts``, ``sft_history``, ``rm_history``. Chapters 4 to 6 start from it; chapter 4 runs
  its steps one by one (``seed_streams``, ``sft.train``, ``preference_data``,
  ``reward.train``) and checks with ``Prepared.differences`` that they give the same objects.
- ``check_prepared``: the check of a ``Prepared`` that phase 3 and the later chapters' trainers make.
- ``PrepareInterrupted``: what an interrupted ``prepare`` raises, with the parts made so far.

Phase 1 lives in ``rlnotes.sft``, phase 2 in ``rlnotes.reward``, phase 3 in ``rlnotes.rlhf``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import nn

from . import models, reward, sentiment, sft
from .reward import Preferences, RewardModel, label_preferences, sample_pairs
from .sft import heldout_loss
from .trainer import History, TrainingInterrupted, TrainResult
from .utils import check_positive_int, check_seed, get_device


@dataclass
class Prepared:
    """Phases 1 and 2, ready for phase 3 (and for chapter 5's DPO on the same data).

    An interrupted ``prepare`` hands back a partial one (``PrepareInterrupted.result``): the parts
    that exist, None for the rest; ``check_prepared`` refuses it where a complete one is needed.
    """

    task: sentiment.SentimentTask
    tokenizer: object
    sft: nn.Module
    reward_model: RewardModel
    train_prefs: Preferences
    test_prefs: Preferences
    eval_prompts: list
    sft_history: History
    rm_history: History
    sft_heldout: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.sft.parameters()).device

    def differences(self, other: "Prepared") -> list[str]:
        """The names of the fields in which ``other`` differs from this one (empty: the same phases 1 and 2).

        Models are compared tensor by tensor (parameters and buffers, bit for bit), preference
        data text by text and reward by reward, histories by their logged ``loss`` and
        ``accuracy``, the tokenizer by its vocabulary; ``task`` by its type.
        """
        if not isinstance(other, Prepared):
            raise TypeError(f"other must be a Prepared, got {type(other).__name__}")

        def same_model(a, b):
            sa, sb = a.state_dict(), b.state_dict()
            return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)

        def same_prefs(a, b):
            return (len(a) == len(b) and a.prompts == b.prompts and a.chosen == b.chosen and a.rejected == b.rejected
                    and torch.equal(a.r_chosen, b.r_chosen) and torch.equal(a.r_rejected, b.r_rejected))

        def same_history(a, b):
            keys = [k for k in ("loss", "accuracy") if k in a.updates or k in b.updates]
            return all(k in a.updates and k in b.updates and np.array_equal(a.update_array(k), b.update_array(k))
                       for k in keys)

        checks = {"task": type(self.task) is type(other.task),
                  "tokenizer": self.tokenizer.get_vocab() == other.tokenizer.get_vocab(),
                  "sft": same_model(self.sft, other.sft),
                  "reward_model": same_model(self.reward_model, other.reward_model),
                  "train_prefs": same_prefs(self.train_prefs, other.train_prefs),
                  "test_prefs": same_prefs(self.test_prefs, other.test_prefs),
                  "eval_prompts": list(self.eval_prompts) == list(other.eval_prompts),
                  "sft_history": same_history(self.sft_history, other.sft_history),
                  "rm_history": same_history(self.rm_history, other.rm_history),
                  "sft_heldout": self.sft_heldout == other.sft_heldout}
        return [name for name, same in checks.items() if not same]


def check_prepared(name: str, value) -> Prepared:
    """Return ``value`` if it is a complete ``Prepared`` (``prepare.prepare``'s result); ``TypeError``
    naming ``name`` for anything else, ``ValueError`` for a partial one (an interrupted ``prepare``)."""
    if not isinstance(value, Prepared):
        raise TypeError(f"{name} must be a Prepared (from prepare.prepare), got {type(value).__name__}")
    missing = [f.name for f in fields(Prepared) if getattr(value, f.name) is None]
    if missing:
        raise ValueError(f"{name} is a partial Prepared (from an interrupted prepare.prepare): {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} None; run prepare.prepare to the end")
    return value


class PrepareInterrupted(TrainingInterrupted):
    """``prepare`` interrupted: a ``TrainingInterrupted`` whose ``result`` is a partial ``Prepared``
    (the parts made so far, None for the rest) and ``phase`` the step it stopped in."""

    def __init__(self, result: Prepared, phase: str, cause: BaseException):
        missing = [f.name for f in fields(Prepared) if getattr(result, f.name) is None]
        detail = f"in prepare's {phase}, a Prepared with None for {', '.join(missing) or 'nothing'}"
        super().__init__(result, cause, detail)
        self.phase = phase


# The random streams of ``prepare``, one per use, each seeded with seed + its offset.
SEED_STREAMS = {"init": 0, "sft_corpus": 0, "sft": 0, "reward_model": 0, "train_pairs": 1, "test_pairs": 2,
                "eval_prompts": 3, "heldout_corpus": 7}


def seed_streams(seed: int = 0) -> dict[str, int]:
    """The seed of each random stream of ``prepare(seed)``: ``seed + SEED_STREAMS[name]``, by name.

    Calling the steps of ``prepare`` one by one with these seeds gives the same objects.
    """
    seed, top = check_seed("seed", seed), max(SEED_STREAMS.values())
    if seed + top >= 2**63:
        raise ValueError(f"seed must be below 2**63 - {top} (prepare adds up to {top} to it), got {seed}")
    return {name: seed + offset for name, offset in SEED_STREAMS.items()}


def preference_data(task, model, tokenizer, split: str, n: int, *, seed: int) -> Preferences:
    """Phase 2's data D: ``n`` prompts x of ``split`` drawn with ``seed``, two responses y1, y2 ~ pi(.|x)
    sampled from ``model`` (``sample_pairs``), and the Bradley-Terry labeller on r* (eq. rlhf-bt,
    ``label_preferences``), both with the same ``seed``."""
    n = check_positive_int("n", n)
    prompts = task.prompts(n, seed, split)
    y1, y2 = sample_pairs(model, tokenizer, prompts, seed=seed, max_new_tokens=task.max_response_tokens)
    return label_preferences(task, prompts, y1, y2, seed=seed)


# The largest sizes ``prepare`` takes, each far above the book's (defaults 4000, 1500, 500, 256) and
# such that a call at the limit takes seconds on a CPU, not hours: SFT texts (``n_sft``),
# preference pairs sampled from pi^SFT (``n_pairs``, ``n_test_pairs``: two responses each) and
# held-out prompts (``n_eval_prompts``, which ``measure.evaluate`` samples from).
MAX_SIZES = {"n_sft": 32_768, "n_pairs": 8192, "n_test_pairs": 8192, "n_eval_prompts": 8192}


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        value = check_positive_int(name, value)
        if name in MAX_SIZES and value > MAX_SIZES[name]:
            raise ValueError(f"{name} must be <= MAX_SIZES[{name!r}] ({MAX_SIZES[name]}), got {value}")


def prepare(seed: int = 0, *, n_sft: int = 4000, sft_steps: int = 200, n_pairs: int = 1500,
            n_test_pairs: int = 500, rm_steps: int = 200, n_eval_prompts: int = 256, model=None,
            tokenizer=None, device=None) -> Prepared:
    """Phases 1 and 2, seeded: build the task and tokenizer, SFT a tiny GPT-2 on the corpus, sample pairs
    from pi^SFT, label them by Bradley-Terry on r*, and fit the reward model r_phi on the train pairs.

    ``model`` / ``tokenizer`` (e.g. from ``models.load_causal_lm``) replace the tiny GPT-2 and the
    word-level tokenizer: the scale-up path. Train pairs use the train prompts, test pairs and
    ``eval_prompts`` the held-out (template, item) combinations. Each random use has its own seed
    (``seed_streams``); chapter 4 runs the same steps one by one and gets the same objects.

    Refused: sizes that are not integers >= 1 or are above ``MAX_SIZES``, a ``model`` without a
    ``tokenizer`` or the other way round, a ``model`` that is not a ``torch.nn.Module``.
    An interrupt (Ctrl-C) at any point raises
    ``PrepareInterrupted`` (a ``TrainingInterrupted``) whose ``result`` is a partial ``Prepared``:
    the parts made so far and None for the rest. ``sft`` is then the model as far as SFT got
    (``sft_history`` says how far; None if SFT had not started), ``reward_model`` likewise with
    ``rm_history`` (not yet normalised to mean zero if its training was cut short).
    """
    _check_sizes(n_sft=n_sft, sft_steps=sft_steps, n_pairs=n_pairs, n_test_pairs=n_test_pairs, rm_steps=rm_steps,
                 n_eval_prompts=n_eval_prompts)
    s = seed_streams(seed)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a causal LM, e.g. from models.load_causal_lm), "
                        f"got {type(model).__name__}")
    parts = {f.name: None for f in fields(Prepared)} | {"sft_heldout": {}}
    phase = "the task and tokenizer"
    try:
        task = parts["task"] = sentiment.SentimentTask()
        if tokenizer is None:
            tokenizer = sentiment.build_tokenizer(task)
            model = models.tiny_gpt2(tokenizer, seed=s["init"])
        parts["tokenizer"] = tokenizer
        model = parts["sft"] = model.to(get_device(device))
        phase = "SFT"
        xs, ys = task.sft_corpus(n_sft, s["sft_corpus"])
        hx, hy = task.sft_corpus(500, s["heldout_corpus"], split="test")
        parts["sft_heldout"] = {"untrained": heldout_loss(model, tokenizer, hx, hy)}
        parts["sft_history"] = sft.train((xs, ys), model=model, tokenizer=tokenizer, steps=sft_steps,
                                         seed=s["sft"]).history
        parts["sft_heldout"]["sft"] = heldout_loss(model, tokenizer, hx, hy)
        model.requires_grad_(False)
        phase = "the preference data"
        parts["train_prefs"] = preference_data(task, model, tokenizer, "train", n_pairs, seed=s["train_pairs"])
        parts["test_prefs"] = preference_data(task, model, tokenizer, "test", n_test_pairs, seed=s["test_pairs"])
        phase = "the reward model"
        rm = reward.train(parts["train_prefs"], sft=model, tokenizer=tokenizer, steps=rm_steps, seed=s["reward_model"])
        parts["reward_model"], parts["rm_history"] = rm.model, rm.history
        parts["eval_prompts"] = task.prompts(n_eval_prompts, s["eval_prompts"], "test")
    except KeyboardInterrupt as stop:
        if isinstance(stop, TrainingInterrupted) and isinstance(stop.result, TrainResult):  # SFT or the reward model
            model_key, history_key = ("sft", "sft_history") if phase == "SFT" else ("reward_model", "rm_history")
            parts[model_key], parts[history_key] = stop.result.model, stop.result.history
        raise PrepareInterrupted(Prepared(**parts), phase, stop) from stop
    return Prepared(**parts)
