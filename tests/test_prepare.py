"""rlnotes.prepare: phases 1 and 2 as one call (``prepare``) and as chapter 4's visible steps
(``seed_streams``, ``preference_data``, ``Prepared.differences``), a partial ``Prepared`` after an
interrupt, and what ``prepare`` refuses."""

import copy
import dataclasses

import pytest
import torch

from rlnotes import models, prepare, reward, rlhf, sentiment, sft


@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


def test_prepared_data_follows_the_seed_streams(prepared):
    assert len(prepared.train_prefs) == 32 and len(prepared.test_prefs) == 16
    # one random stream per use, seed + prepare.SEED_STREAMS[use]; no seed field on Prepared
    streams = prepare.SEED_STREAMS
    assert prepared.train_prefs.prompts == prepared.task.prompts(32, streams["train_pairs"], "train")
    assert prepared.test_prefs.prompts == prepared.task.prompts(16, streams["test_pairs"], "test")
    assert prepared.eval_prompts == prepared.task.prompts(8, streams["eval_prompts"], "test")
    assert len(set(streams[k] for k in ("train_pairs", "test_pairs", "eval_prompts", "heldout_corpus"))) == 4
    assert "seed" not in {f.name for f in dataclasses.fields(prepare.Prepared)}
    assert set(prepared.test_prefs.prompts) <= set(prepared.task.prompt_pool("test"))
    sub = prepared.train_prefs.subset([3, 1])
    assert sub.prompts == [prepared.train_prefs.prompts[3], prepared.train_prefs.prompts[1]]
    assert sub.r_chosen.tolist() == prepared.train_prefs.r_chosen[[3, 1]].tolist()
    assert prepared.device == torch.device("cpu")
    enc = prepared.train_prefs.encode(prepared.tokenizer)
    assert enc["chosen_ids"].shape == enc["chosen_mask"].shape and enc["prompt_ids"].shape[0] == 32


def test_scale_up_path_from_a_saved_folder(tmp_path, prepared):
    models.save_pretrained(models.tiny_gpt2(prepared.tokenizer, seed=3), prepared.tokenizer, tmp_path / "lm")
    model, tok = models.load_causal_lm(tmp_path / "lm", device="cpu")
    small = prepare.prepare(1, n_sft=32, sft_steps=3, n_pairs=8, n_test_pairs=4, rm_steps=2, n_eval_prompts=4,
                         model=model, tokenizer=tok)
    assert small.sft is model and len(small.test_prefs) == 4
    with pytest.raises(ValueError, match="both model and tokenizer"):
        prepare.prepare(0, model=model)


# ------------------------------------------------------------- bad input and interrupts

TINY = dict(n_sft=64, sft_steps=3, n_pairs=32, n_test_pairs=16, rm_steps=3, n_eval_prompts=8)


def test_prepare_refuses_a_model_that_is_not_a_module(tiny_prepared):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got str"):
        prepare.prepare(0, model="gpt2", tokenizer=tiny_prepared.tokenizer, **TINY)


def _interrupted_prepare():
    from rlnotes.trainer import TrainingInterrupted

    with pytest.raises(KeyboardInterrupt) as caught:
        prepare.prepare(0, **TINY)
    assert isinstance(caught.value, TrainingInterrupted) and isinstance(caught.value.result, prepare.Prepared)
    return caught.value


def test_prepare_interrupted_at_once_gives_an_empty_prepared(monkeypatch, interrupt_on_call):
    monkeypatch.setattr(sentiment, "SentimentTask", interrupt_on_call(1)(sentiment.SentimentTask))
    stop = _interrupted_prepare()
    assert stop.phase == "the task and tokenizer"
    assert all(getattr(stop.result, f.name) is None for f in dataclasses.fields(prepare.Prepared)
               if f.name != "sft_heldout")


def test_prepare_interrupted_in_sft_gives_a_prepared_with_the_partial_sft(monkeypatch, interrupt_on_call):
    import rlnotes.sft

    monkeypatch.setattr(rlnotes.sft, "sft_loss", interrupt_on_call(2)(rlnotes.sft.sft_loss))
    stop = _interrupted_prepare()
    P = stop.result
    assert stop.phase == "SFT" and isinstance(P.task, sentiment.SentimentTask) and P.tokenizer is not None
    assert isinstance(P.sft, torch.nn.Module) and len(P.sft_history) == 1 and "untrained" in P.sft_heldout
    assert P.reward_model is None and P.train_prefs is None and P.rm_history is None and P.eval_prompts is None
    with pytest.raises(ValueError, match="prepared is a partial Prepared"):
        rlhf.train(P)


def test_prepare_interrupted_in_the_preference_data_or_the_reward_model(monkeypatch, interrupt_on_call):
    import rlnotes.reward

    with monkeypatch.context() as m:
        m.setattr(prepare, "sample_pairs", interrupt_on_call(2)(reward.sample_pairs))
        stop = _interrupted_prepare()
    assert stop.phase == "the preference data" and len(stop.result.sft_history) == 3
    assert len(stop.result.train_prefs) == 32 and stop.result.test_prefs is None and stop.result.reward_model is None
    monkeypatch.setattr(rlnotes.reward, "reward_loss", interrupt_on_call(2)(rlnotes.reward.reward_loss))
    stop = _interrupted_prepare()
    P = stop.result
    assert stop.phase == "the reward model" and isinstance(P.reward_model, reward.RewardModel)
    assert len(P.rm_history) == 1 and len(P.test_prefs) == 16 and P.eval_prompts is None


def test_seed_streams_leave_room_for_their_offsets():
    top = max(prepare.SEED_STREAMS.values())
    assert max(prepare.seed_streams(2**63 - 1 - top).values()) == 2**63 - 1
    with pytest.raises(ValueError, match=rf"seed must be below 2\*\*63 - {top}"):
        prepare.seed_streams(2**63 - top)



# ------------------------------------------------------------- phases 1 and 2 step by step (chapter 4)
# The steps, run one by one with ``seed_streams``, give exactly what ``prepare.prepare`` returns;
# ``Prepared.differences`` finds any field that differs.

SIZES = dict(n_sft=96, sft_steps=6, n_pairs=24, n_test_pairs=12, rm_steps=4, n_eval_prompts=8)
def step_by_step(seed):
    """Chapter 4's cells, at toy sizes."""
    s = prepare.seed_streams(seed)
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    model = models.tiny_gpt2(tok, seed=s["init"])
    xs, ys = task.sft_corpus(SIZES["n_sft"], s["sft_corpus"])
    hx, hy = task.sft_corpus(500, s["heldout_corpus"], split="test")
    untrained = sft.heldout_loss(model, tok, hx, hy)
    sft_run = sft.train((xs, ys), model=model, tokenizer=tok, steps=SIZES["sft_steps"], seed=s["sft"])
    pi_sft = sft_run.model.requires_grad_(False)
    heldout = {"untrained": untrained, "sft": sft.heldout_loss(pi_sft, tok, hx, hy)}
    train = prepare.preference_data(task, pi_sft, tok, "train", SIZES["n_pairs"], seed=s["train_pairs"])
    test = prepare.preference_data(task, pi_sft, tok, "test", SIZES["n_test_pairs"], seed=s["test_pairs"])
    rm_run = reward.train(train, sft=pi_sft, tokenizer=tok, steps=SIZES["rm_steps"], seed=s["reward_model"])
    return prepare.Prepared(task, tok, pi_sft, rm_run.model, train, test,
                         task.prompts(SIZES["n_eval_prompts"], s["eval_prompts"], "test"),
                         sft_run.history, rm_run.history, heldout)


@pytest.fixture(scope="module")
def shortcut():
    return prepare.prepare(3, **SIZES)


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
    assert prepare.prepare(4, **SIZES).differences(shortcut) != []   # another seed: another prepare
    with pytest.raises(TypeError, match="other must be a Prepared"):
        shortcut.differences("P")


def test_seed_streams_offsets_and_range():
    s = prepare.seed_streams(10)
    assert s == {name: 10 + offset for name, offset in prepare.SEED_STREAMS.items()}
    assert len(set(s.values())) > 1   # not one seed for every use
    with pytest.raises(ValueError, match="seed"):
        prepare.seed_streams(-1)


def test_preference_data_pairs_two_samples_and_labels_them(shortcut):
    task, tok, pi = shortcut.task, shortcut.tokenizer, shortcut.sft
    d = prepare.preference_data(task, pi, tok, "test", 16, seed=5)
    assert len(d) == 16 and d.prompts == task.prompts(16, 5, "test")
    y1, y2 = reward.sample_pairs(pi, tok, d.prompts, seed=5, max_new_tokens=task.max_response_tokens)
    assert all({c, r} == {a, b} for c, r, a, b in zip(d.chosen, d.rejected, y1, y2))   # each pair is (y1, y2), ordered
    assert torch.equal(d.r_chosen, task.true_rewards(d.prompts, d.chosen))           # r* of the chosen text
    again = prepare.preference_data(task, pi, tok, "test", 16, seed=5)
    assert again.chosen == d.chosen and again.rejected == d.rejected
    with pytest.raises(ValueError, match="n must be"):
        prepare.preference_data(task, pi, tok, "test", 0, seed=5)


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

@pytest.mark.parametrize("name", sorted(prepare.MAX_SIZES))
def test_prepare_refuses_sizes_above_the_limit_before_any_work(name):
    limit = prepare.MAX_SIZES[name]
    with pytest.raises(ValueError, match=rf"{name} must be <= MAX_SIZES\['{name}'\] \({limit}\), got {limit + 1}"):
        prepare.prepare(0, **{name: limit + 1})


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_prepare_builds_float32_models_under_a_float64_default_dtype():
    torch.set_default_dtype(torch.float64)
    try:
        p = prepare.prepare(0, n_sft=8, sft_steps=1, n_pairs=4, n_test_pairs=2, rm_steps=1, n_eval_prompts=2)
    finally:
        torch.set_default_dtype(torch.float32)
    dtypes = {q.dtype for m in (p.sft, p.reward_model) for q in m.parameters()}
    assert dtypes == {torch.float32}
