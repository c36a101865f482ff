"""rlnotes.length_bias: the pass/fail reward on r* and the final mean of a logged metric."""

import pickle

import pytest
import torch

from rlnotes import grpo, length_bias
from rlnotes.sentiment import SentimentTask
from rlnotes.trainer import History


# ------------------------------------------------------------------ pass_reward (eq. pass-reward)

def test_pass_reward_is_r_star_thresholded():
    xs = ["review of the movie :"] * 5
    ys = ["it was great .",                  # r* = 1: passes at tau = 1
          "great , good and fun .",          # r* = 2 (capped)
          "it was great and bad .",          # r* = 0
          "great great .",                   # r* = 1 - 1 repeat = 0
          "it was great"]                    # r* = 1 - 1 unfinished = 0
    r_star = SentimentTask().true_rewards(xs, ys)
    assert r_star.tolist() == [1.0, 2.0, 0.0, 0.0, 0.0]
    assert length_bias.pass_reward(xs, ys).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert length_bias.pass_reward(xs, ys, tau=2).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert length_bias.pass_reward(xs, ys, tau=-5).tolist() == [1.0] * 5
    assert length_bias.pass_reward(xs, ys).dtype == torch.float32


def test_pass_reward_ignores_length():
    xs = ["so , the cafe :"] * 2
    short, long = "it was good .", "the story is good but slow ."   # both r* = 1
    assert length_bias.pass_reward(xs, [short, long]).tolist() == [1.0, 1.0]


def test_pass_reward_uses_the_task_given():
    lenient = SentimentTask(unfinished_penalty=0.0)
    assert length_bias.pass_reward(["x :"], ["it was great"], task=lenient).tolist() == [1.0]


@pytest.mark.parametrize("bad, kind", [(True, TypeError), ("1", TypeError), (float("nan"), ValueError),
                                       (float("inf"), ValueError), (None, TypeError)])
def test_pass_reward_refuses_bad_tau(bad, kind):
    with pytest.raises(kind, match="tau"):
        length_bias.pass_reward(["x :"], ["it was great ."], tau=bad)


def test_pass_reward_refuses_bad_texts_and_task():
    with pytest.raises(TypeError, match="responses"):
        length_bias.pass_reward(["x :"], "it was great .")
    with pytest.raises(ValueError, match="same length"):
        length_bias.pass_reward(["x :", "y :"], ["it was great ."])
    with pytest.raises(TypeError, match="task"):
        length_bias.pass_reward(["x :"], ["it was great ."], task="sentiment")


def test_pass_reward_travels_to_worker_processes():
    assert pickle.loads(pickle.dumps(length_bias.pass_reward)) is length_bias.pass_reward


def test_pass_reward_drives_grpo(tiny_prepared):
    out = grpo.train(tiny_prepared, steps=2, batch_size=2, num_generations=2, reward_fn=length_bias.pass_reward)
    rewards = out.history.update_array("reward")
    assert ((rewards >= 0) & (rewards <= 1)).all()
    assert length_bias.final_mean(out.history, "reward", last=2) == pytest.approx(rewards.mean())


# ------------------------------------------------------------------ final_mean

def _history(values):
    h = History()
    for v in values:
        h.log({"completions/mean_length": v})
    return h


def test_final_mean_of_the_last_updates():
    h = _history([1.0, 2.0, 3.0, 4.0, 5.0])
    assert length_bias.final_mean(h, last=2) == pytest.approx(4.5)
    assert length_bias.final_mean(h, "completions/mean_length", last=5) == pytest.approx(3.0)
    assert isinstance(length_bias.final_mean(h, last=1), float)


def test_final_mean_refuses():
    h = _history([1.0, 2.0])
    with pytest.raises(ValueError, match="last"):
        length_bias.final_mean(h, last=3)
    with pytest.raises((TypeError, ValueError), match="last"):
        length_bias.final_mean(h, last=0)
    with pytest.raises(KeyError, match="reward"):
        length_bias.final_mean(h, "reward")
    with pytest.raises(TypeError, match="history"):
        length_bias.final_mean({"completions/mean_length": [1.0]})
