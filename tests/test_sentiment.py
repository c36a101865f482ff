"""rlnotes.sentiment: the toy task's true reward, prompts and corpus, its tokenizer, distinct-n and the
texts check; and what each refuses, naming the argument."""

import pytest
import torch

from rlnotes import lm, sentiment


def test_true_reward_closed_forms(task):
    assert task.true_reward("x", "it was great .") == 1.0
    assert task.true_reward("x", "it was great and bad .") == 0.0
    assert task.true_reward("x", "great , wonderful and lovely .") == 2.0  # capped at 2
    assert task.true_reward("x", "awful , dull and poor .") == -2.0  # capped at -2
    assert task.true_reward("x", "great great great great .") == 1.0 - 3.0  # three repeats
    assert task.true_reward("x", "it was quiet .") == 0.0
    assert task.true_reward("x", "it was great") == 1.0 - 1.0  # unfinished: no full stop at the end
    assert task.true_reward("x", "") == -1.0
    assert torch.equal(task.true_rewards(["a", "b"], ["good .", "bad ."]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="same length"):
        task.true_rewards(["a"], ["good .", "bad ."])


def test_prompts_and_corpus(task):
    train, test = task.prompt_pool("train"), task.prompt_pool("test")
    assert not set(train) & set(test) and len(train) + len(test) == 60
    assert task.prompts(5, seed=3) == task.prompts(5, seed=3)
    assert set(task.prompts(50, seed=1, split="test")) <= set(test)
    with pytest.raises(ValueError, match="split"):
        task.prompts(3, seed=0, split="dev")
    with pytest.raises(ValueError, match="n must be >= 1"):
        task.prompts(0, seed=0)
    xs, ys = task.sft_corpus(2000, seed=0)
    words = [y.split() for y in ys]
    assert all(len(w) == len(set(w)) for w in words)  # the corpus never repeats a token
    assert max(len(w) for w in words) < task.max_response_tokens  # room for EOS
    assert abs(task.true_rewards(xs, ys).mean().item()) < 0.15  # mixed sentiment, near neutral


def test_tokenizer_round_trip(task, tok):
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and len(tok) == len(task.words) + 3
    xs, ys = task.sft_corpus(20, seed=0)
    ids, mask = lm.encode_responses(tok, ys)
    assert lm.decode_responses(tok, ids, mask) == ys
    assert tok.unk_token_id not in ids.tolist()


def test_distinct_n():
    assert sentiment.distinct_n(["a b a b"], 1) == 0.5
    assert sentiment.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert sentiment.distinct_n(["a b", "a b"], 2) == 0.5
    assert sentiment.distinct_n(["a"], 2) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        sentiment.distinct_n(["a"], 0)


def test_prompts_are_bounded(task):
    with pytest.raises(ValueError, match=r"n must be <= 1000000 \(MAX_PROMPTS; the pool holds 48 distinct "
                                         r"prompts, drawn with replacement\), got 1000000000"):
        task.prompts(10**9, 0)
    with pytest.raises(ValueError, match="n must be <= 1000000 .*pool holds 12 distinct prompts"):
        task.sft_corpus(10**9, 0, split="test")
    assert len(task.prompts(sentiment.MAX_PROMPTS, 0, "test")) == sentiment.MAX_PROMPTS  # the bound itself is allowed


def test_sentiment_task_arguments(task):
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        task.prompts(3, seed=None)  # would otherwise seed from the clock
    with pytest.raises(TypeError, match="seed must be an integer"):
        task.sft_corpus(3, seed="0")
    with pytest.raises(ValueError, match="cap must be finite and >= 0"):
        sentiment.SentimentTask(cap=-1.0)
    with pytest.raises(TypeError, match="response must be a string"):
        task.true_reward("x", None)
    with pytest.raises(TypeError, match="task must be a SentimentTask"):
        sentiment.build_tokenizer(None)


def test_a_string_is_not_split_into_characters(task):
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        task.true_rewards("review :", "good .")
    with pytest.raises(TypeError, match="responses must be a list of strings, got str"):
        sentiment.distinct_n("a b a b", 1)
    with pytest.raises(ValueError, match="responses must be a non-empty list"):
        sentiment.distinct_n([], 1)
    assert sentiment.check_texts("prompts", ("a", "b")) == ["a", "b"]  # any sequence of strings
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        sentiment.check_texts("prompts", "abc")
