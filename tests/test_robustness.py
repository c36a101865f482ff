"""Bad input gets a clear error naming the argument, never a silent wrong answer (issue 12).

Each test is written as a user meets the problem: the call, then the error it must raise (with
the argument named) or the right answer it must give.
"""

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlnotes
from rlnotes import bandits, lm
from rlnotes.returns import discounted_returns, gae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batch(tok):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    return p, pm, r, rm


# 1. integer rewards are not truncated ---------------------------------------------------------

def test_integer_rewards_give_float_returns():
    g = discounted_returns(torch.tensor([[1], [1]]), torch.tensor([[0], [0]]), 0.5)
    assert g.dtype == torch.float32 and g.tolist() == [[1.5], [1.0]]
    adv, ret = gae(torch.tensor([[1], [1]]), torch.tensor([[0], [0]]), torch.zeros(2, 1), torch.zeros(1), 0.5, 1.0)
    assert adv.dtype == torch.float32 and adv.tolist() == [[1.5], [1.0]] and ret.tolist() == [[1.5], [1.0]]
    g64 = discounted_returns(torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1), 0.5)
    assert g64.dtype == torch.float64
    assert discounted_returns(torch.ones(0, 3), torch.zeros(0, 3), 0.9).shape == (0, 3)  # no steps: no returns


def test_returns_refuse_nan_bad_dones_and_arrays():
    with pytest.raises(ValueError, match="rewards must be finite"):
        discounted_returns(torch.tensor([[float("nan")], [1.0]]), torch.zeros(2, 1), 0.5)
    with pytest.raises(ValueError, match="values must be finite"):
        gae(torch.ones(2, 1), torch.tensor([[float("inf")], [0.0]]), torch.zeros(2, 1), torch.zeros(1), 0.5, 0.9)
    with pytest.raises(ValueError, match="dones must hold only 0 and 1"):
        discounted_returns(torch.ones(2, 1), torch.tensor([[2.0], [0.0]]), 0.5)
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor, got ndarray"):
        discounted_returns(np.ones((2, 1)), np.zeros((2, 1)), 0.5)
    with pytest.raises(TypeError, match="gamma must be a number"):
        discounted_returns(torch.ones(2, 1), torch.zeros(2, 1), "0.9")


# 2. exact KL, softmax, score and Fisher on extreme logits ------------------------------------

def test_kl_is_exact_on_extreme_logits():
    assert bandits.kl([800.0, 0.0], [0.0, 0.0]) == pytest.approx(math.log(2), abs=1e-12)
    assert bandits.kl([0.0, -800.0], [0.0, 0.0]) == pytest.approx(math.log(2), abs=1e-12)  # 0 log 0 = 0
    assert bandits.kl([0.0, 0.0], [800.0, 0.0]) == pytest.approx(400 + math.log(0.5), rel=1e-12)
    theta = np.array([1e4, 0.0, -1e4])
    assert bandits.kl(theta, theta) == 0.0


def test_softmax_score_fisher_on_extreme_logits():
    assert bandits.softmax([1e4, 0.0, -1e4]).tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_array_equal(bandits.score([1e4, 0.0], [1]), [[-1.0, 1.0]])
    np.testing.assert_array_equal(bandits.fisher([1e4, 0.0]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="theta must be finite"):
        bandits.softmax([np.inf, 0.0])
    with pytest.raises(ValueError, match="theta must be finite"):
        bandits.fisher([np.nan, 0.0])


# 3. a string where a list of strings is expected ---------------------------------------------

def test_a_string_is_not_split_into_characters(task, tok):
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        lm.encode_prompts(tok, "review of the movie :")
    with pytest.raises(TypeError, match="responses must be a list of strings, got str"):
        lm.encode_responses(tok, "it was good .")
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        task.true_rewards("review :", "good .")
    with pytest.raises(TypeError, match="responses must be a list of strings, got str"):
        lm.distinct_n("a b a b", 1)
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a string, got NoneType"):
        lm.encode_prompts(tok, ["review :", None])
    with pytest.raises(TypeError, match="response_ids must be a 2-D tensor"):
        lm.decode_responses(tok, [[1, 2]], [[1, 1]])
    with pytest.raises(ValueError, match="responses must be a non-empty list"):
        lm.distinct_n([], 1)
    assert lm.check_texts("prompts", ("a", "b")) == ["a", "b"]  # any sequence of strings
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        lm.check_texts("prompts", "abc")


# 4. empty prompts and prompts longer than the context -----------------------------------------

def test_empty_prompt_is_named(tok):
    with pytest.raises(ValueError, match=r"prompts\[1\] = '' is empty"):
        lm.encode_prompts(tok, ["review of the movie :", ""])
    with pytest.raises(ValueError, match=r"prompts\[0\] = '   ' is empty"):
        lm.encode_prompts(tok, ["   "])


def test_prompt_longer_than_context_is_named(tok, model):
    p, pm = lm.encode_prompts(tok, [" ".join(["review of the movie :"] * 7)])  # 35 tokens
    r, rm = lm.encode_responses(tok, ["it was good ."])  # 5 tokens
    context = r"40 tokens, more than the model's context of 32 tokens \(config.n_positions\)"
    with pytest.raises(ValueError, match=context):
        lm.token_logprobs(model, p, pm, r, rm)
    lm.check_context(model, 32)  # exactly full is fine
    with pytest.raises(ValueError, match="context of 32"):
        lm.check_context(model, 33)
    # padding does not count: a wide but mostly padded batch fits
    wide_p = torch.cat([torch.full((1, 30), tok.pad_token_id), p[:, -5:]], 1)
    wide_m = torch.cat([torch.zeros(1, 30, dtype=torch.long), pm[:, -5:]], 1)
    assert torch.isfinite(lm.token_logprobs(model, wide_p, wide_m, r, rm)).all()


def test_response_logits_checks_its_batch(tok, model, batch):
    p, pm, r, rm = batch
    with pytest.raises(ValueError, match="same batch size, got 2 and 1"):
        lm.response_logits(model, p, pm, r[:1], rm[:1])
    with pytest.raises(ValueError, match="prompt_mask must be LEFT-padded"):
        lm.response_logits(model, p.flip(1), pm.flip(1), r, rm)
    with pytest.raises(ValueError, match="response_mask must be RIGHT-padded"):
        lm.response_logits(model, p, pm, r.flip(1), rm.flip(1))
    with pytest.raises(ValueError, match=r"response_ids must be token ids in \[0, 78\)"):
        lm.response_logits(model, p, pm, r + 1000, rm)
    with pytest.raises(TypeError, match="prompt_ids must hold integer token ids"):
        lm.response_logits(model, p.float(), pm, r, rm)
    with pytest.raises(ValueError, match="prompt_ids and prompt_mask must have the same shape"):
        lm.response_logits(model, p, pm[:, 1:], r, rm)


# 5. load_causal_lm: folders are checked, hub ids go to transformers, no remote code -----------

@pytest.fixture
def record_from_pretrained(monkeypatch):
    """Record every transformers from_pretrained call (source and keywords), still loading."""
    import transformers

    calls = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def spy(source, *args, _original=original, **kwargs):
            calls.append((source, kwargs))
            return _original(source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_load_a_saved_folder_without_remote_code(tmp_path, tok, model, record_from_pretrained):
    lm.save_pretrained(model, tok, tmp_path / "sft")
    for source in (tmp_path / "sft", str(tmp_path / "sft")):
        model2, tok2 = lm.load_causal_lm(source, device="cpu")
        assert tok2.pad_token_id == tok.pad_token_id
        assert all(p.equal(q) for p, q in zip(model2.parameters(), model.parameters()))
    assert len(record_from_pretrained) == 4
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in record_from_pretrained)


def test_missing_or_empty_folder_fails_at_once(tmp_path, monkeypatch, record_from_pretrained):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no such folder './sftt'"):
        lm.load_causal_lm("./sftt")
    with pytest.raises(ValueError, match="no such folder '.*nope'"):
        lm.load_causal_lm(tmp_path / "nope")
    with pytest.raises(ValueError, match="no such folder 'checkpoints/sft'"):  # its parent folder exists
        lm.load_causal_lm("checkpoints/sft")
    with pytest.raises(ValueError, match="'empty' is not a saved model and tokenizer: it has no config.json"):
        lm.load_causal_lm("empty")
    with pytest.raises(ValueError, match="'afile' is a file"):
        lm.load_causal_lm("afile")
    with pytest.raises(TypeError, match="name_or_path must be a hub id or a folder"):
        lm.load_causal_lm(None)
    assert record_from_pretrained == []  # transformers (and the hub) never asked


def test_hub_ids_go_to_transformers(monkeypatch):
    import transformers

    calls = []

    def refuse(source, **kwargs):
        calls.append((source, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    for name in ("gpt2", "openai-community/gpt2"):
        with pytest.raises(OSError, match="offline"):
            lm.load_causal_lm(name)
    assert calls == [("gpt2", {"trust_remote_code": False}),
                     ("openai-community/gpt2", {"trust_remote_code": False})]


# 6. save_pretrained onto a file ---------------------------------------------------------------

def test_save_onto_a_file_is_an_error(tmp_path, tok, model):
    target = tmp_path / "model.bin"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="model.bin' is a file"):
        lm.save_pretrained(model, tok, target)
    assert target.read_text() == "not a folder"


# 7. log-probs: exactly 0 at padding even under a -inf logit, values unchanged ------------------

class BannedPad(torch.nn.Module):
    """A model whose pad-token logit is -inf, as after a logits processor that bans the token."""

    def __init__(self, inner, pad_id):
        super().__init__()
        self.inner, self.pad_id, self.config = inner, pad_id, inner.config

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.pad_id] = float("-inf")
        return out


def test_padding_is_zero_not_nan_under_a_minus_inf_logit(tok, model, batch):
    p, pm, r, rm = batch
    assert (rm == 0).any() and (r[rm == 0] == tok.pad_token_id).all()
    with torch.no_grad():
        logp = lm.token_logprobs(BannedPad(model, tok.pad_token_id), p, pm, r, rm)
        seq = lm.sequence_logprob(BannedPad(model, tok.pad_token_id), p, pm, r, rm)
    assert torch.isfinite(logp).all() and (logp[rm == 0] == 0).all()
    assert torch.isfinite(seq).all()
    logits = torch.tensor([[[0.0, float("-inf")], [3.0, 0.0]]])
    out = lm.logprobs_from_logits(logits, torch.tensor([[1, 1]]), torch.tensor([[0, 1]]))
    assert out[0, 0].item() == 0.0 and out[0, 1].item() == pytest.approx(-3.0 - math.log1p(math.exp(-3.0)))
    with pytest.raises(ValueError, match="same leading shape"):
        lm.logprobs_from_logits(logits, torch.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        lm.logprobs_from_logits(logits, torch.tensor([[1, 1]]), temperature=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_values_are_bit_for_bit_the_gathered_log_softmax(model, batch, temperature):
    p, pm, r, rm = batch
    with torch.no_grad():
        logits = lm.response_logits(model, p, pm, r, rm)
        by_hand = F.log_softmax(logits / temperature, dim=-1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
        logp = lm.token_logprobs(model, p, pm, r, rm, temperature=temperature)
    assert torch.equal(logp[rm == 1], by_hand[rm == 1])  # the same bits, not just close
    assert torch.equal(logp, by_hand * rm)  # as the former multiply by the mask gave
    assert not hasattr(lm, "_device")


# 8. float64 logits stay float64, half precision is upcast ------------------------------------

def test_logits_dtype(tok, batch):
    p, pm, r, rm = batch
    with torch.no_grad():
        assert lm.response_logits(lm.tiny_gpt2(tok).double(), p, pm, r, rm).dtype == torch.float64
        assert lm.response_logits(lm.tiny_gpt2(tok).to(torch.bfloat16), p, pm, r, rm).dtype == torch.float32
        assert lm.response_logits(lm.tiny_gpt2(tok), p, pm, r, rm).dtype == torch.float32


# 9. bandit actions, samples and shapes --------------------------------------------------------

def test_bandit_actions_and_shapes():
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\)"):
        bandits.score(np.zeros(3), [-1])  # formerly: silently the last arm
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\)"):
        bandits.score(np.zeros(3), [3])
    with pytest.raises(TypeError, match="actions must be integers"):
        bandits.score(np.zeros(3), [0.5])
    with pytest.raises(ValueError, match="theta must be a 1-D vector"):
        bandits.fisher(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"theta_old and theta must have the same shape, got \(2,\) and \(3,\)"):
        bandits.kl(np.zeros(2), np.zeros(3))
    bandit = bandits.SoftmaxBandit(means=[0.0, 1.0])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bandit.sample(np.zeros(2), 0, rng)
    with pytest.raises(ValueError, match="theta must have one logit per arm, k = 2"):
        bandit.sample(np.zeros(3), 5, rng)
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        bandit.sample(np.zeros(2), 5, 0)
    with pytest.raises(ValueError, match="theta must have one logit per arm"):
        bandit.expected_reward(np.zeros(3))
    with pytest.raises(ValueError, match="means must be finite"):
        bandits.SoftmaxBandit(means=[0.0, np.nan])
    with pytest.raises(ValueError, match="baseline must be a finite number"):
        bandit.score_function_samples(np.zeros(2), 5, rng, baseline=float("nan"))


def test_sentiment_task_arguments(task):
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        task.prompts(3, seed=None)  # would otherwise seed from the clock
    with pytest.raises(TypeError, match="seed must be an integer"):
        task.sft_corpus(3, seed="0")
    with pytest.raises(ValueError, match="cap must be finite and >= 0"):
        lm.SentimentTask(cap=-1.0)
    with pytest.raises(TypeError, match="response must be a string"):
        task.true_reward("x", None)
    with pytest.raises(TypeError, match="task must be a SentimentTask"):
        lm.build_tokenizer(None)


# 10. check_version -----------------------------------------------------------------------------

def test_check_version():
    with pytest.raises(TypeError, match="built_with must be a version string"):
        rlnotes.check_version(None)
    with pytest.raises(ValueError, match="built_with must be a version"):
        rlnotes.check_version("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rlnotes.check_version(rlnotes.__version__)
        rlnotes.check_version("0.1")  # the same version as 0.1.0
        rlnotes.check_version("0.1.0.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.2.0"):
        rlnotes.check_version("0.2.0")
    with pytest.warns(UserWarning, match="built with rlnotes 0.1.1"):
        rlnotes.check_version("0.1.1")


# 11. dependency floors -------------------------------------------------------------------------

def _version(text):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", text).groups())


def test_torch_floor_is_the_safe_one():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', pyproject).group(1)
    assert _version(floor) >= (2, 6)  # torch.load(weights_only=True) bypass below 2.6 (CVE-2025-32434)
    oldest = re.search(r'"torch==([\d.]+)\.\*"', (ROOT / "Makefile").read_text()).group(1)
    assert oldest == floor  # `make oldest` tests the floor itself
    assert _version(torch.__version__) >= (2, 6)
