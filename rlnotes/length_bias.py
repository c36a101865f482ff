"""Chapter 7: GRPO's length bias on a pass/fail reward (Liu et al. 2025, "Understanding R1-Zero-like
training", Dr. GRPO).

GRPO's ``loss_type="grpo"`` averages each response's token losses over its own ``|y_i|`` tokens
(eq. grpo-loss), so a token of response i is pushed with weight A_i / |y_i|: among wrong answers
(A_i < 0) the longer ones are pushed down least, among right answers (A_i > 0) the shorter ones
are pushed up most. ``"dr_grpo"`` and ``"dapo"`` weigh every token alike. The bias shows only
where the reward leaves the length free and most of the signal is pass/fail, as with a verifier:

    r_tau(x, y) = 1[r*(x, y) >= tau]                                            (eq. pass-reward)

(``pass_reward``, with r* of eq. lm-rstar, ``sentiment.SentimentTask.true_reward``).
``final_mean`` reads one logged metric at the end of a run, as chapter 6 reads the length.
"""

from __future__ import annotations

import math

import torch

from .sentiment import SentimentTask, check_texts
from .trainer import History
from .utils import check_in_range, check_positive_int

__all__ = ["pass_reward", "final_mean", "TASK"]

TASK = SentimentTask()  # r*'s default settings, those of prepare.prepare


def pass_reward(prompts, responses, tau: float = 1.0, task: SentimentTask = TASK) -> torch.Tensor:
    """r_tau(x, y) = 1[r*(x, y) >= tau] for each pair (eq. pass-reward): a verifier's pass/fail on r*
    (eq. lm-rstar), a float tensor [N] of 0s and 1s.

    With tau = 1 a response passes when it is finished, repeats no word and says at least one more
    positive than negative word; how long it is does not enter. A ``reward_fn`` for
    ``grpo.train`` (and ``rlnotes.seeds.train_seeds``: a module-level function, so worker
    processes can import it). ``prompts`` and ``responses``: lists of strings of one length;
    ``tau``: a finite real number; ``task``: a ``SentimentTask``.
    """
    prompts, responses = check_texts("prompts", prompts), check_texts("responses", responses)
    tau = check_in_range("tau", tau, -math.inf, math.inf)
    if not isinstance(task, SentimentTask):
        raise TypeError(f"task must be a SentimentTask, got {type(task).__name__}")
    return (task.true_rewards(prompts, responses) >= tau).float()


def final_mean(history: History, key: str = "completions/mean_length", last: int = 10) -> float:
    """The mean of ``key`` over the ``last`` updates of a run (chapter 6's final length: the mean
    response length in tokens over the last 10 updates). ``history``: a ``trainer.History``;
    ``key``: a logged metric (KeyError naming the logged ones otherwise); ``last``: an integer from
    1 to the number of updates logged."""
    if not isinstance(history, History):
        raise TypeError(f"history must be a trainer.History, got {type(history).__name__}")
    values = history.update_array(key)
    last = check_positive_int("last", last)
    if last > len(values):
        raise ValueError(f"last must be at most the {len(values)} updates logged, got {last}")
    return float(values[-last:].mean())
