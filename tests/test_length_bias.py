"""rlnotes.length_bias: the first-word verifier and the length derivatives along GRPO's and Dr. GRPO's steps."""

import pickle

import pytest
import torch

from rlnotes import grpo, length_bias


# ------------------------------------------------------------------ first_word_reward (eq. first-word-reward)

def test_first_word_reward_reads_the_first_word_only():
    xs = ["review of the movie :"] * 5
    ys = ["great .", "great but awful and boring and dull .", "it was great .", "", "bad but great ."]
    assert length_bias.first_word_reward(xs, ys).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert length_bias.first_word_reward(xs, ys).dtype == torch.float32


def test_first_word_reward_ignores_length_and_ending():
    xs = ["so , the cafe :"] * 3
    ys = ["fun", "fun , good and lovely .", "fun fun fun fun fun fun fun"]
    assert length_bias.first_word_reward(xs, ys).tolist() == [1.0] * 3


def test_first_word_reward_refuses():
    with pytest.raises(TypeError, match="responses"):
        length_bias.first_word_reward(["x :"], "great .")
    with pytest.raises(ValueError, match="same length"):
        length_bias.first_word_reward(["x :", "y :"], ["great ."])
    with pytest.raises(TypeError, match="prompts"):
        length_bias.first_word_reward([1], ["great ."])


def test_first_word_reward_travels_to_worker_processes_and_drives_grpo(tiny_prepared):
    assert pickle.loads(pickle.dumps(length_bias.first_word_reward)) is length_bias.first_word_reward
    out = grpo.train(tiny_prepared, steps=2, batch_size=2, num_generations=2, reward_fn=length_bias.first_word_reward)
    rewards = out.history.update_array("reward")
    assert ((rewards >= 0) & (rewards <= 1)).all()


# ------------------------------------------------------------------ length_derivatives (eq. length-derivative)

SMALL = dict(batch_size=8, num_generations=4, eval_prompts=16)


def test_length_derivatives_shape_pairing_and_determinism(tiny_prepared):
    before = [p.detach().clone() for p in tiny_prepared.sft.parameters()]
    flags = [p.requires_grad for p in tiny_prepared.sft.parameters()]
    d = length_bias.length_derivatives(tiny_prepared, 0, **SMALL)
    assert set(d) == set(grpo.LOSS_TYPES)
    for lt in d:
        assert set(d[lt]) == {"pass", "fail", "all"}
        assert all(isinstance(v, float) and abs(v) < 1e3 for v in d[lt].values())
    # on one batch dr_grpo's and dapo's gradients differ by a positive factor: one direction
    assert d["dr_grpo"] == pytest.approx(d["dapo"], rel=1e-4, abs=1e-5)
    assert d == length_bias.length_derivatives(tiny_prepared, 0, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_prepared.sft.parameters()))
    assert flags == [p.requires_grad for p in tiny_prepared.sft.parameters()]


def test_length_derivatives_subset_of_loss_types(tiny_prepared):
    d = length_bias.length_derivatives(tiny_prepared, 0, loss_types=["grpo"], **SMALL)
    assert list(d) == ["grpo"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss_types=["ppo"]), "loss_types"), (dict(batch_size=0), "batch_size"),
    (dict(num_generations=1), "num_generations"), (dict(eval_prompts=2.5), "eval_prompts"),
    (dict(seed=-1), "seed")])
def test_length_derivatives_refuses_bad_arguments(tiny_prepared, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        length_bias.length_derivatives(tiny_prepared, **kwargs)


def test_length_derivatives_refuses_what_is_not_prepared():
    with pytest.raises(TypeError, match="prepared"):
        length_bias.length_derivatives("P")


def test_length_derivatives_refuses_a_sample_without_both_verdicts(tiny_prepared):
    with pytest.raises(ValueError, match="every response of the batch"):
        length_bias.length_derivatives(tiny_prepared, 0, batch_size=1, num_generations=2, eval_prompts=1)
