"""rlnotes.reward: the checks on its inputs (and ``check_rewards``, the check of what a reward
function returns); the closed forms of the Bradley-Terry model and the loss; the trained reward model."""

import copy
import math

import numpy as np
import pytest
import torch

from rlnotes import lm, reward

NAN, INF = float("nan"), float("inf")


def test_reward_loss_refuses_non_finite_rewards():
    with pytest.raises(ValueError, match=r"r_chosen must be finite \(it holds NaN or inf\)"):
        reward.reward_loss(torch.tensor([NAN, 0.0]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"r_rejected must be finite \(it holds NaN or inf\)"):
        reward.reward_loss(torch.zeros(2), torch.tensor([0.0, -INF]))
    with pytest.raises(TypeError, match="r_chosen must be real numbers .* got torch.bool"):
        reward.reward_loss(torch.tensor([True]), torch.tensor([False]))
    with pytest.raises(TypeError, match="r_rejected must be real numbers .* got 'a'"):
        reward.reward_loss([1.0], "a")
    # the neighbours: lists of floats give the tensors' loss; a float tensor keeps its gradient
    rc = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = reward.reward_loss(rc, torch.tensor([0.5, 0.5]))
    assert reward.reward_loss([1.0, -2.0], [0.5, 0.5]).item() == loss.item()
    loss.backward()
    assert rc.grad is not None


def test_preference_accuracy_refuses_empty_mismatched_and_nan():
    with pytest.raises(ValueError, match="r_chosen and r_rejected must hold at least one pair, got none"):
        reward.preference_accuracy([], [])
    with pytest.raises(ValueError, match="r_chosen and r_rejected must hold at least one pair, got none"):
        reward.preference_accuracy(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match=r"shapes must match: r_chosen \(3,\), r_rejected \(2,\)"):
        reward.preference_accuracy([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"shapes must match: r_chosen \(2,\), r_rejected \(2, 1\)"):
        reward.preference_accuracy(torch.zeros(2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="r_chosen must be finite"):  # NaN used to count as a wrong ranking
        reward.preference_accuracy(torch.tensor([NAN, 1.0]), torch.tensor([0.0, 0.0]))
    with pytest.raises(TypeError, match="r_chosen must be real numbers"):
        reward.preference_accuracy(True, False)
    # the neighbours: lists, integers and one pair as two numbers
    assert reward.preference_accuracy([2.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]) == 0.625
    assert reward.preference_accuracy(torch.tensor([2, 0]), torch.tensor([1, 0])) == 0.75
    assert reward.preference_accuracy(1.0, 0.0) == 1.0


def test_bt_probability_refuses_nan_and_broadcasting():
    with pytest.raises(ValueError, match="r1 must be finite"):
        reward.bt_probability(torch.tensor([NAN]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="r2 must be finite"):  # inf - inf would give NaN
        reward.bt_probability(torch.tensor([1.0]), torch.tensor([INF]))
    with pytest.raises(ValueError, match=r"shapes must match: r1 \(3,\), r2 \(3, 1\)"):  # not a [3, 3] table
        reward.bt_probability(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="r1 must be real numbers"):
        reward.bt_probability("1", 0.0)
    # the neighbours: one side a single number (chapter 4 compares gaps with 0), lists, plain numbers
    gaps = torch.tensor([0.0, 1.0, -2.0])
    assert torch.equal(reward.bt_probability(gaps, torch.tensor(0.0)), torch.sigmoid(gaps))
    assert torch.equal(reward.bt_probability([0.0, 1.0, -2.0], 0.0), torch.sigmoid(gaps))
    assert reward.bt_probability(1, 0).item() == pytest.approx(1 / (1 + math.exp(-1)))


def test_preferences_refuse_non_finite_true_rewards():
    good = dict(prompts=["x"], chosen=["a"], rejected=["b"], r_chosen=[1.0], r_rejected=[0.0])
    with pytest.raises(ValueError, match="r_chosen must be finite"):
        reward.Preferences(**{**good, "r_chosen": [NAN]})
    with pytest.raises(ValueError, match="r_rejected must be finite"):
        reward.Preferences(**{**good, "r_rejected": [-INF]})
    assert reward.Preferences(**good).r_chosen.tolist() == [1.0]


def test_reward_model_checks_texts_and_context(tok, model):
    rm = reward.RewardModel(model).eval()
    long_prompt = " ".join(["good"] * 31)  # + " good ." and EOS: 34 tokens, past the 32 positions
    with pytest.raises(ValueError, match="prompt \\+ response is 34 tokens, more than the model's context of 32"):
        rm.score(tok, [long_prompt], ["good ."])
    with pytest.raises(ValueError, match="prompts and responses must have the same length .* got 2 and 1"):
        rm.score(tok, ["review of the movie :", "phone review :"], ["good ."])
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        rm.score(tok, "review of the movie :", ["good ."])
    with pytest.raises(TypeError, match="batch_size must be an integer, got True"):
        rm.score(tok, ["phone review :"], ["good ."], batch_size=True)
    with pytest.raises(TypeError, match="base_lm must be a torch.nn.Module"):
        reward.RewardModel("gpt2")
    scores = rm.score(tok, ["review of the movie :", "phone review :"], ["good .", "bad ."], batch_size=1)
    assert scores.shape == (2,) and torch.allclose(scores, rm.score(tok, ["review of the movie :", "phone review :"],
                                                                    ["good .", "bad ."]), atol=1e-6)


def test_train_reward_model_checks_the_context(tok, model):
    long_prompt = " ".join(["good"] * 31)
    prefs = reward.Preferences([long_prompt, "phone review :"], ["good .", "good ."], ["bad .", "bad ."],
                               [1.0, 1.0], [-1.0, -1.0])
    with pytest.raises(ValueError, match="prompt \\+ response is 34 tokens, more than the model's context of 32"):
        reward.train(prefs, sft=model, tokenizer=tok, steps=1, batch_size=2)
    fits = prefs.subset([1])
    assert len(reward.train(fits, sft=model, tokenizer=tok, steps=1, batch_size=2).history.update_array("loss")) == 1


def test_sample_pairs_and_labels_check_their_arguments(task, tok, model):
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        reward.sample_pairs(model, tok, [], seed=0)  # used to return two empty lists
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        reward.sample_pairs(model, tok, "review of the movie :", seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        reward.sample_pairs(model, tok, ["phone review :"], seed=-1)
    with pytest.raises(TypeError, match="batch_size must be an integer, got 0.5"):
        reward.sample_pairs(model, tok, ["phone review :"], seed=0, batch_size=0.5)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        reward.label_preferences(task, ["x"], ["good ."], ["bad ."], seed=-1)
    with pytest.raises(TypeError, match=r"y2\[0\] must be a string, got int 3"):
        reward.label_preferences(task, ["x"], ["good ."], [3], seed=0)
    y1, y2 = reward.sample_pairs(model, tok, task.prompts(4, 0), seed=1, batch_size=3)
    assert len(y1) == len(y2) == 4
    assert len(reward.label_preferences(task, task.prompts(4, 0), y1, y2, seed=0)) == 4


def test_encoding_a_tokenizer_without_pad_is_refused_in_score(tok, model):
    import copy

    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match=r"tokenizer.pad_token_id is None\): set tokenizer.pad_token"):
        reward.RewardModel(model).score(no_pad, ["phone review :"], ["good ."])
    assert lm.encode_prompts(tok, ["phone review :"])[0].shape == (1, 3)


def test_preferences_want_one_reward_per_pair():  # fix27 item 15
    with pytest.raises(ValueError, match=r"r_chosen must hold one reward per pair: a 1-D .* got shape \(1, 1\)"):
        reward.Preferences(["p"], ["c"], ["r"], [[1.0]], [0.0])
    with pytest.raises(ValueError, match=r"r_rejected must hold one reward per pair: a 1-D .* got shape \(1, 1\)"):
        reward.Preferences(["p"], ["c"], ["r"], [1.0], torch.zeros(1, 1))
    assert reward.Preferences(["p"], ["c"], ["r"], [1.0], [0.0]).r_chosen.shape == (1,)


def test_verifiable_reward_is_r_star(tiny_prepared):
    P = tiny_prepared
    prompts = P.eval_prompts[:4]
    responses = ["it was great .", "great great", "the story was awful .", "fun but dull ."]
    p, pm = lm.encode_prompts(P.tokenizer, prompts)
    ids, mask = lm.encode_responses(P.tokenizer, responses)
    got = reward.VerifiableReward(P.task, P.tokenizer)(p, pm, ids, mask)
    torch.testing.assert_close(got, P.task.true_rewards(prompts, responses))

# ------------------------------------------------------------- closed forms, and the trained reward model

@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


def test_bt_probability_closed_form():
    assert reward.bt_probability(torch.tensor(1.0), torch.tensor(0.0)).item() == pytest.approx(math.e / (math.e + 1))
    assert reward.bt_probability(torch.tensor(3.0), torch.tensor(3.0)).item() == 0.5
    r1, r2 = torch.randn(10), torch.randn(10)
    assert torch.allclose(reward.bt_probability(r1, r2) + reward.bt_probability(r2, r1), torch.ones(10))
    assert torch.allclose(reward.bt_probability(r1, r2), r1.exp() / (r1.exp() + r2.exp()))


def test_reward_loss_at_extreme_margins():
    assert reward.reward_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    big = torch.tensor([1e4]), torch.tensor([-1e4])
    assert reward.reward_loss(*big).item() == 0.0
    assert reward.reward_loss(big[1], big[0]).item() == pytest.approx(2e4)  # finite, = -margin
    rc = torch.tensor([-1e4, 1e4], requires_grad=True)
    reward.reward_loss(rc, torch.tensor([1e4, -1e4])).backward()
    assert torch.isfinite(rc.grad).all() and rc.grad.tolist() == pytest.approx([-0.5, 0.0])
    with pytest.raises(ValueError, match="shapes must match"):
        reward.reward_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="at least one pair"):
        reward.reward_loss(torch.zeros(0), torch.zeros(0))


def test_preference_accuracy():
    # right, wrong, a tie (one half), right: (1 + 0 + 0.5 + 1) / 4
    assert reward.preference_accuracy(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])) == 0.625
    with pytest.raises(ValueError, match="shapes must match"):
        reward.preference_accuracy(torch.zeros(2), torch.zeros(3))


def test_preferences_validation():
    good = dict(prompts=["x"], chosen=["a ."], rejected=["b ."], r_chosen=[1.0], r_rejected=[0.0])
    assert len(reward.Preferences(**good)) == 1
    with pytest.raises(ValueError, match="empty preference data"):
        reward.Preferences([], [], [], [], [])
    with pytest.raises(ValueError, match="chosen must have one entry per prompt"):
        reward.Preferences(**{**good, "chosen": ["a .", "c ."]})
    with pytest.raises(ValueError, match="rejected must be a list of strings"):
        reward.Preferences(**{**good, "rejected": [3]})
    with pytest.raises(TypeError, match="prefs must be a Preferences"):
        reward.train([("x", "a", "b")], sft=None, tokenizer=None, steps=1)


def test_label_preferences_follow_bradley_terry(prepared):
    task = prepared.task
    n = 4000
    prefs = reward.label_preferences(task, ["x"] * n, ["it was great ."] * n, ["it was quiet ."] * n, seed=0)
    frac = sum(c == "it was great ." for c in prefs.chosen) / n  # r* = 1 vs 0: p = sigma(1)
    assert frac == pytest.approx(1 / (1 + math.exp(-1)), abs=0.025)
    assert torch.all(prefs.r_chosen == torch.tensor([task.true_reward("x", c) for c in prefs.chosen]))
    with pytest.raises(ValueError, match="equal length"):
        reward.label_preferences(task, ["x"], [], [], seed=0)


def test_sample_pairs_is_seeded(prepared):
    y1, y2 = reward.sample_pairs(prepared.sft, prepared.tokenizer, ["phone review :"] * 5, seed=0)
    assert len(y1) == len(y2) == 5
    assert (y1, y2) == reward.sample_pairs(prepared.sft, prepared.tokenizer, ["phone review :"] * 5, seed=0)


def test_reward_model_shape_and_normalisation(prepared, sft20_batch):
    rm = prepared.reward_model
    assert rm(*sft20_batch).shape == (2,)
    assert not any(p.requires_grad for p in rm.parameters())
    prefs = prepared.train_prefs
    scores = rm.score(prepared.tokenizer, prefs.prompts * 2, prefs.chosen + prefs.rejected)
    assert abs(scores.mean().item()) < 1e-4  # E[r_phi] = 0 on pi^SFT's samples
    fresh = reward.RewardModel(prepared.sft)
    assert all(p.requires_grad for p in fresh.parameters())
    fresh.normalize_(prepared.tokenizer, ["x :"] * 2, ["good .", "bad ."])
    assert abs(fresh.score(prepared.tokenizer, ["x :"] * 2, ["good .", "bad ."]).mean().item()) < 1e-5
    assert len(prepared.rm_history.update_array("loss")) == 5
    assert set(prepared.rm_history.updates) == {"loss", "accuracy", "seconds"}


def test_check_rewards_refuses_what_overflows_the_dtype():  # fix27 item 19
    with pytest.raises(ValueError, match=r"reward_fn must return numbers that fit float32 .*too large for float32"):
        reward.check_rewards("reward_fn", np.array([1e39, 1.0]), 2, dtype=torch.float32)
    assert reward.check_rewards("reward_fn", np.array([1e38, 1.0]), 2, dtype=torch.float32).dtype == torch.float32
    assert reward.check_rewards("reward_fn", np.array([1e39, 1.0]), 2).dtype == torch.float64


def test_check_rewards_one_number_for_one_response_and_integers():
    assert torch.equal(reward.check_rewards("reward_fn", 0.5, 1), torch.tensor([0.5]))
    assert torch.equal(reward.check_rewards("reward_fn", np.float64(2.0), 1, dtype=torch.float32), torch.tensor([2.0]))
    ints = reward.check_rewards("reward_fn", [1, 0, 1], 3)
    assert ints.dtype == torch.get_default_dtype() and ints.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"reward_fn must return one number per response \(3\).*got 2 values"):
        reward.check_rewards("reward_fn", [1.0, 2.0], 3)


# ------------------------------------------------------------------ issue 27, round two: bad input

def test_preferences_name_rewards_that_are_not_numbers():
    with pytest.raises(TypeError, match=r"r_chosen must be real numbers .* got \['x'\]"):
        reward.Preferences(["p"], ["c"], ["r"], ["x"], [0.0])
    with pytest.raises(TypeError, match="r_chosen must be real numbers .* got None"):
        reward.Preferences(["p"], ["c"], ["r"], None, [0.0])
    with pytest.raises(ValueError, match=r"r_chosen must hold one reward per pair: .* got shape \(1, 1\)"):
        reward.Preferences(["p"], ["c"], ["r"], [[1.0]], [0.0])


def test_preferences_subset_names_a_position_out_of_range():
    prefs = reward.Preferences(["p", "q"], ["c", "d"], ["r", "s"], [1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"idx must hold positions in \[0, 2\) \(the number of pairs\), got 99"):
        prefs.subset([99])
    with pytest.raises(TypeError, match="idx must be a list of integer positions"):
        prefs.subset(["a"])
    assert prefs.subset(torch.tensor([1])).prompts == ["q"]


def test_label_preferences_and_reward_model_name_what_is_not_a_task_or_lm():
    with pytest.raises(TypeError, match=r"task must have a true_rewards\(prompts, responses\) method .* NoneType"):
        reward.label_preferences(None, ["x"], ["a"], ["c"], seed=0)
    with pytest.raises(TypeError, match="base_lm must be a transformers causal LM .* got Linear"):
        reward.RewardModel(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got NoneType"):
        reward.sample_pairs(None, None, ["x"], seed=0)


@pytest.fixture(scope="module")
def small_prefs(task):
    xs, ys = task.sft_corpus(16, seed=0)
    return reward.label_preferences(task, xs[:8], ys[:8], ys[8:], seed=0)


def test_train_names_an_sft_that_is_none_or_float16(tok, model, small_prefs):
    with pytest.raises(TypeError, match="sft must be a torch.nn.Module .* got NoneType"):
        reward.train(small_prefs, sft=None, tokenizer=tok, steps=2, batch_size=4)
    with pytest.raises(TypeError, match="sft has torch.float16 parameters"):
        reward.train(small_prefs, sft=copy.deepcopy(model).half(), tokenizer=tok, steps=2, batch_size=4)
    with pytest.raises(ValueError, match=r"batch_size must be <= 4096 \(MAX_BATCH_SIZE\), got 1000000"):
        reward.train(small_prefs, sft=model, tokenizer=tok, steps=2, batch_size=10**6)


def test_train_runs_inside_no_grad_inference_mode_and_float64_default(tok, model, small_prefs):
    def run():
        out = reward.train(small_prefs, sft=model, tokenizer=tok, steps=2, batch_size=4)
        return out.history.update_array("loss").tolist(), out.model.offset.item()

    expected = run()
    with torch.no_grad():
        assert run() == expected
    with torch.inference_mode():
        assert run() == expected
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert run() == expected
    finally:
        torch.set_default_dtype(old)


def test_ctrl_c_while_building_the_reward_model_gives_a_partial_result(tok, model, small_prefs, monkeypatch):
    from rlnotes.trainer import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reward.Preferences, "encode", interrupted)
    with pytest.raises(TrainingInterrupted) as stop:
        reward.train(small_prefs, sft=model, tokenizer=tok, steps=2, batch_size=4)
    assert isinstance(stop.value.result.model, reward.RewardModel) and len(stop.value.result.history) == 0


def test_train_names_an_sft_built_inside_inference_mode(tok, small_prefs):
    with torch.inference_mode():
        built = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="sft was built inside torch.inference_mode"):
        reward.train(small_prefs, sft=built, tokenizer=tok, steps=2, batch_size=4)


def test_check_rewards_names_a_python_list_too_large_for_float32():
    with pytest.raises(ValueError, match=r"reward_fn must return numbers that fit float32 .* for responses \[0\]"):
        reward.check_rewards("reward_fn", [1e39, 1.0], 2, dtype=torch.float32)
    assert reward.check_rewards("reward_fn", [0.1, 2], 2).dtype == torch.get_default_dtype()
    assert torch.equal(reward.check_rewards("reward_fn", [0.1], 1, dtype=torch.float32), torch.tensor([0.1]))


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_train_names_sft_when_it_is_a_reward_model(prepared, small_prefs):
    with pytest.raises(TypeError, match=r"sft must be a transformers causal LM .*got RewardModel"):
        reward.train(small_prefs, sft=prepared.reward_model, tokenizer=prepared.tokenizer, steps=1)


def test_empty_preferences_are_refused_where_they_are_made():
    with pytest.raises(ValueError, match=r"prompts must be a non-empty list of strings \(empty preference data\)"):
        reward.Preferences([], [], [], torch.zeros(0), torch.zeros(0))
