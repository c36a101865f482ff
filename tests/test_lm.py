"""rlnotes.lm: encoding, log-probabilities, grouped scoring; and what each refuses, naming the argument."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rlnotes import kvcache, lm, models, sampling


def test_encode_padding(tok):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    assert pm.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert p[1, :2].tolist() == [tok.pad_token_id] * 2
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    assert rm.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert r[0, 4].item() == tok.eos_token_id and r[1, 2].item() == tok.eos_token_id
    r, rm = lm.encode_responses(tok, ["it was good ."], max_len=3)
    assert r.shape == (1, 3) and tok.eos_token_id not in r.tolist()[0]
    with pytest.raises(ValueError, match="prompts"):
        lm.encode_prompts(tok, [])
    with pytest.raises(ValueError, match="responses"):
        lm.encode_responses(tok, [])


def test_logprobs_mask_against_hand_computation(tok, model):
    prompts, responses = ["review of the movie :", "phone review :"], ["it was good .", "good ."]
    p, pm = lm.encode_prompts(tok, prompts)
    r, rm = lm.encode_responses(tok, responses)
    logp = lm.token_logprobs(model, p, pm, r, rm)
    assert logp.shape == r.shape
    assert torch.all(logp[rm == 0] == 0)
    for b in range(2):  # by hand: one unpadded sequence, log-softmax of the logits before each token
        x = tok(prompts[b], add_special_tokens=False)["input_ids"]
        y = tok(" " + responses[b], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([x + y])).logits[0]
        hand = [F.log_softmax(logits[len(x) - 1 + t], -1)[y[t]].item() for t in range(len(y))]
        assert logp[b, :len(y)].tolist() == pytest.approx(hand, abs=1e-5)
    seq = lm.sequence_logprob(model, p, pm, r, rm)
    assert torch.allclose(seq, logp.sum(1))
    logits, hidden = lm.response_logits(model, p, pm, r, rm, output_hidden_states=True)
    assert logits.shape == (2, 5, len(tok)) and hidden.shape == (2, 5, 64)
    with pytest.raises(ValueError, match="temperature"):
        lm.token_logprobs(model, p, pm, r, rm, temperature=0)


def test_response_logits_keeps_only_the_response_positions(tok, model):
    """The output layer runs on the last T + 1 positions only; the logits equal the full forward's
    slice at positions P-1 .. P+T-2, and a model whose forward lacks logits_to_keep gets the slice."""
    p, pm = lm.encode_prompts(tok, ["phone review :", "review of the movie :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "bad ."])
    ids, mask, positions = lm.joint(p, pm, r, rm)
    full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    P, T = p.shape[1], r.shape[1]
    torch.testing.assert_close(lm.response_logits(model, p, pm, r, rm), full[:, P - 1:P + T - 1])
    assert kvcache.takes_logits_to_keep(type(model))

    class Plain(torch.nn.Module):  # a forward with no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask, position_ids, output_hidden_states=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    assert not kvcache.takes_logits_to_keep(Plain)
    torch.testing.assert_close(lm.response_logits(Plain(model), p, pm, r, rm), full[:, P - 1:P + T - 1])


def test_group_response_logits_and_last_hidden_run_each_prompt_once(tok, model):
    """k responses per prompt, prompt-major: the same logits and last hidden states as the joint pass
    on the prompts repeated k times, from one pass over the prompts (one forward call for B rows)."""
    p, pm = lm.encode_prompts(tok, ["phone review :", "review of the movie :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "bad .", "good .", "it was bad movie ."])
    rp, rpm = p.repeat_interleave(2, 0), pm.repeat_interleave(2, 0)
    torch.testing.assert_close(lm.group_response_logits(model, p, pm, r, rm), lm.response_logits(model, rp, rpm, r, rm))
    torch.testing.assert_close(lm.last_hidden(model.base_model, p, pm, r, rm),
                               lm.last_hidden(model.base_model, rp, rpm, r, rm))
    rows = []
    hook = model.base_model.register_forward_pre_hook(lambda m, a, kw: rows.append(len(a[0] if a else kw["input_ids"])), with_kwargs=True)
    lm.group_response_logits(model, p, pm, r, rm)
    hook.remove()
    assert rows == [2, 4]  # the 2 prompts once, then the 4 responses on their cache
    empty = torch.zeros_like(rm)  # an empty response: the hidden state at the prompt's last token
    torch.testing.assert_close(lm.last_hidden(model.base_model, p, pm, r, empty),
                               lm.last_hidden(model.base_model, rp, rpm, r[:, :1], empty[:, :1]))
    with pytest.raises(ValueError, match="k >= 1 responses per prompt"):
        lm.group_response_logits(model, p, pm, r[:3], rm[:3])


# ------------------------------------------------------------- bad input

def test_a_tokenizer_without_pad_or_eos_is_named(tok, model):
    no_pad, no_eos = copy.deepcopy(tok), copy.deepcopy(tok)
    no_pad.pad_token, no_eos.eos_token = None, None
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    with pytest.raises(ValueError, match=r"tokenizer.pad_token_id is None\): set tokenizer.pad_token"):
        lm.encode_prompts(no_pad, ["review of the movie :"])
    with pytest.raises(ValueError, match=r"tokenizer.pad_token_id is None\): set tokenizer.pad_token"):
        sampling.sample(model, no_pad, p, pm, 4)
    with pytest.raises(ValueError, match=r"tokenizer.eos_token_id is None\): set tokenizer.eos_token"):
        lm.encode_responses(no_eos, ["good ."])
    with pytest.raises(ValueError, match=r"tokenizer.eos_token_id is None\): set tokenizer.eos_token"):
        sampling.sample(model, no_eos, p, pm, 4)
    no_pad.pad_token = no_pad.eos_token  # what the message suggests: then it encodes (EOS as padding)
    ids, mask = lm.encode_prompts(no_pad, ["review of the movie :", "phone review :"])
    assert torch.equal(mask, pm) and ids[1, 0].item() == tok.eos_token_id


def test_last_hidden_checks_the_context(tok, model):
    long_prompt = " ".join(["good"] * 31)  # 31 tokens + the response's 3: past the 32 positions
    p, pm = lm.encode_prompts(tok, [long_prompt])
    r, rm = lm.encode_responses(tok, ["good ."])
    with pytest.raises(ValueError, match="prompt \\+ response is 34 tokens, more than the model's context of 32"):
        lm.last_hidden(model.base_model, p, pm, r, rm)
    with pytest.raises(ValueError, match="prompt \\+ response is 34 tokens"):  # k = 2 responses per prompt
        lm.last_hidden(model.base_model, p, pm, *lm.encode_responses(tok, ["good .", "bad ."]))
    two, two_mask = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    with pytest.raises(ValueError, match="prompt_mask must be LEFT-padded"):  # right-padded prompts
        lm.last_hidden(model.base_model, two.flip(1), two_mask.flip(1),
                       *lm.encode_responses(tok, ["good .", "bad ."]))
    p, pm = lm.encode_prompts(tok, [" ".join(["good"] * 29)])  # 29 + 3 = 32: fits
    assert lm.last_hidden(model.base_model, p, pm, r, rm).shape == (1, model.config.n_embd)


def test_unknown_words_are_named_in_one_warning(tok):
    import warnings

    with pytest.warns(UserWarning, match="prompts: 2 word\\(s\\) not in the tokenizer's vocabulary, encoded as "
                                         "'<unk>': 'café', '🎬' \\(in 2 of 3 texts, first prompts\\[0\\]\\)") as seen:
        ids, _ = lm.encode_prompts(tok, ["review of the café 🎬 :", "phone review :", "café review :"])
    assert len(seen) == 1 and (ids == tok.unk_token_id).sum() == 3  # encoded as before: <unk>, with a warning
    with pytest.warns(UserWarning, match="responses: 2 word\\(s\\) .*'Great', '!'"):
        lm.encode_responses(tok, ["it was Great !"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the task's own words, and the <unk> token written out: no warning
        lm.encode_prompts(tok, ["review of the movie :", "<unk> review :"])
        lm.encode_responses(tok, ["it was great ."])


# ------------------------------------------------------------- texts, empty prompts, the context, the batch

@pytest.fixture(scope="module")
def batch(tok):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    return p, pm, r, rm


def test_a_string_is_not_split_into_characters(tok):
    with pytest.raises(TypeError, match="prompts must be a list of strings, got str"):
        lm.encode_prompts(tok, "review of the movie :")
    with pytest.raises(TypeError, match="responses must be a list of strings, got str"):
        lm.encode_responses(tok, "it was good .")
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a string, got NoneType"):
        lm.encode_prompts(tok, ["review :", None])
    with pytest.raises(TypeError, match="response_ids must be a 2-D tensor"):
        lm.decode_responses(tok, [[1, 2]], [[1, 1]])


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


# ------------------------------------------------------------- log-probabilities: padding, bits, dtypes

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


def test_logits_dtype(tok, batch):
    p, pm, r, rm = batch
    with torch.no_grad():
        assert lm.response_logits(models.tiny_gpt2(tok).double(), p, pm, r, rm).dtype == torch.float64
        assert lm.response_logits(models.tiny_gpt2(tok).to(torch.bfloat16), p, pm, r, rm).dtype == torch.float32
        assert lm.response_logits(models.tiny_gpt2(tok), p, pm, r, rm).dtype == torch.float32


def test_a_prompt_mask_not_of_0s_and_1s_is_refused(model, tok, batch):  # fix27 item 12
    p, pm, r, rm = batch
    with pytest.raises(ValueError, match=r"prompt_mask must hold only 0 and 1 .*got a value of 2"):
        lm.response_logits(model, p, pm * 2, r, rm)
    with pytest.raises(ValueError, match=r"prompt_mask must hold only 0 and 1 .*got a value of 2"):
        sampling.sample(model, tok, p, pm * 2)
    with torch.no_grad():  # bool masks still pass, with the same logits
        assert torch.equal(lm.response_logits(model, p, pm.bool(), r, rm.bool()), lm.response_logits(model, p, pm, r, rm))


def test_a_response_mask_not_of_0s_and_1s_is_refused(model, batch):  # fix27 item 13
    p, pm, r, rm = batch
    with pytest.raises(ValueError, match=r"response_mask must hold only 0 and 1 .*got a value of 2"):
        lm.response_logits(model, p, pm, r, rm * 2)


def test_logprobs_from_logits_refuses_nan_and_plus_inf_logits(batch):  # fix27 item 14
    _, _, r, rm = batch
    logits = torch.zeros(*r.shape, int(r.max()) + 1)
    with pytest.raises(ValueError, match=r"logits must not hold NaN or \+inf"):
        lm.logprobs_from_logits(logits * float("nan"), r, rm)
    with pytest.raises(ValueError, match=r"logits must not hold NaN or \+inf"):
        lm.logprobs_from_logits(logits.index_fill(-1, torch.tensor([0]), math.inf), r, rm)
    banned = logits.index_fill(-1, torch.tensor([0]), -math.inf)  # -inf: a banned token, allowed
    assert torch.isfinite(lm.logprobs_from_logits(banned, r, rm)).all()


# ------------------------------------------------------------------ issue 27, round two: bad input

def test_a_tokenizer_that_is_none_is_named_as_such(batch):
    _, _, r, rm = batch
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got NoneType None"):
        lm.encode_prompts(None, ["review :"])
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got NoneType None"):
        lm.decode_responses(None, r, rm)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_is_named(tok):
    with pytest.raises(ValueError, match="device 'cuda' is not available on this machine"):
        lm.encode_prompts(tok, ["review :"], device="cuda")
    with pytest.raises(ValueError, match="device 'cuda' is not available on this machine"):
        lm.encode_responses(tok, ["good ."], device="cuda")


def test_a_model_or_body_that_is_none_is_named(tok, model, batch):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got NoneType"):
        lm.response_logits(None, *batch)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got NoneType"):
        lm.group_response_logits(None, *batch)
    with pytest.raises(TypeError, match="body must be a torch.nn.Module .* got NoneType"):
        lm.last_hidden(None, *batch)


def test_logprobs_from_logits_names_bad_ids_and_mask(model, batch):
    p, pm, r, rm = batch
    with torch.no_grad():
        logits = lm.response_logits(model, p, pm, r, rm)
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, \d+\) \(logits' last dimension\), got values"):
        lm.logprobs_from_logits(logits, r + 1000, rm)
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, \d+\)"):
        lm.logprobs_from_logits(logits, r - 1000, rm)
    with pytest.raises(TypeError, match="ids must be a tensor of an integer dtype, got dtype torch.float32"):
        lm.logprobs_from_logits(logits, r.float(), rm)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor, got list"):
        lm.logprobs_from_logits(logits, r, rm.tolist())
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        lm.logprobs_from_logits(logits.tolist(), r, rm)


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------
