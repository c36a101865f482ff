"""Chapter 4's phases 1 and 2 as visible steps: the steps, run one by one with ``seed_streams``,
give exactly what ``rlhf.prepare`` returns; ``Prepared.differences`` finds any field that differs."""

import copy

import pytest
import torch

from rlnotes import lm, reward, rlhf, sft

SIZES = dict(n_sft=96, sft_steps=6, n_pairs=24, n_test_pairs=12, rm_steps=4, n_eval_prompts=8)


def step_by_step(seed):
    """Chapter 4's cells, at toy sizes."""
    s = rlhf.seed_streams(seed)
    task = lm.SentimentTask()
    tok = lm.build_tokenizer(task)
    model = lm.tiny_gpt2(tok, seed=s["init"])
    xs, ys = task.sft_corpus(SIZES["n_sft"], s["sft_corpus"])
    hx, hy = task.sft_corpus(500, s["heldout_corpus"], split="test")
    untrained = sft.heldout_loss(model, tok, hx, hy)
    sft_run = sft.train_sft(model, tok, xs, ys, steps=SIZES["sft_steps"], seed=s["sft"])
    pi_sft = sft_run.model.requires_grad_(False)
    heldout = {"untrained": untrained, "sft": sft.heldout_loss(pi_sft, tok, hx, hy)}
    train = rlhf.preference_data(task, pi_sft, tok, "train", SIZES["n_pairs"], seed=s["train_pairs"])
    test = rlhf.preference_data(task, pi_sft, tok, "test", SIZES["n_test_pairs"], seed=s["test_pairs"])
    rm_run = reward.train_reward_model(pi_sft, tok, train, steps=SIZES["rm_steps"], seed=s["reward_model"])
    return rlhf.Prepared(task, tok, pi_sft, rm_run.model, train, test,
                         task.prompts(SIZES["n_eval_prompts"], s["eval_prompts"], "test"),
                         sft_run.history, rm_run.history, heldout)


@pytest.fixture(scope="module")
def shortcut():
    return rlhf.prepare(3, **SIZES)


def test_steps_one_by_one_give_what_prepare_returns(shortcut):
    steps = step_by_step(3)
    assert steps.differences(shortcut) == []
    assert shortcut.differences(steps) == []
    rc = steps.reward_model.score(steps.tokenizer, steps.test_prefs.prompts, steps.test_prefs.chosen)
    assert torch.equal(rc, shortcut.reward_model.score(shortcut.tokenizer, shortcut.test_prefs.prompts,
                                                       shortcut.test_prefs.chosen))


def test_differences_names_each_field_that_differs(shortcut):
    other = copy.copy(shortcut)
    other.sft = copy.deepcopy(shortcut.sft)
    with torch.no_grad():
        next(other.sft.parameters()).view(-1)[0] += 1e-6   # one float, a little
    assert other.differences(shortcut) == ["sft"]
    other = copy.copy(shortcut)
    other.reward_model = copy.deepcopy(shortcut.reward_model)
    other.reward_model.offset += 1.0                          # a buffer counts too
    other.train_prefs = shortcut.train_prefs.subset(list(range(len(shortcut.train_prefs)))[::-1])
    other.eval_prompts = shortcut.eval_prompts[:-1]
    assert other.differences(shortcut) == ["reward_model", "train_prefs", "eval_prompts"]
    other = copy.copy(shortcut)
    other.sft_heldout = {**shortcut.sft_heldout, "sft": shortcut.sft_heldout["sft"] + 1e-9}
    assert other.differences(shortcut) == ["sft_heldout"]
    assert rlhf.prepare(4, **SIZES).differences(shortcut) != []   # another seed: another prepare
    with pytest.raises(TypeError, match="other must be a Prepared"):
        shortcut.differences("P")


def test_seed_streams_offsets_and_range():
    s = rlhf.seed_streams(10)
    assert s == {name: 10 + offset for name, offset in rlhf.SEED_STREAMS.items()}
    assert len(set(s.values())) > 1   # not one seed for every use
    with pytest.raises(ValueError, match="seed"):
        rlhf.seed_streams(-1)


def test_preference_data_pairs_two_samples_and_labels_them(shortcut):
    task, tok, pi = shortcut.task, shortcut.tokenizer, shortcut.sft
    d = rlhf.preference_data(task, pi, tok, "test", 16, seed=5)
    assert len(d) == 16 and d.prompts == task.prompts(16, 5, "test")
    y1, y2 = reward.sample_pairs(pi, tok, d.prompts, seed=5, max_new_tokens=task.max_response_tokens)
    assert all({c, r} == {a, b} for c, r, a, b in zip(d.chosen, d.rejected, y1, y2))   # each pair is (y1, y2), ordered
    assert torch.equal(d.r_chosen, task.true_rewards(d.prompts, d.chosen))           # r* of the chosen text
    again = rlhf.preference_data(task, pi, tok, "test", 16, seed=5)
    assert again.chosen == d.chosen and again.rejected == d.rejected
    with pytest.raises(ValueError, match="n must be"):
        rlhf.preference_data(task, pi, tok, "test", 0, seed=5)
