"""rlnotes.lm: the toy sentiment task, its tokenizer and tiny GPT-2, encoding, log-probabilities,
sampling, saving and loading; and what each refuses, naming the argument."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rlnotes import lm


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


def test_tiny_gpt2(tok, model):
    assert model.config.vocab_size == len(tok) and model.config.n_layer == 2
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000


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


def test_sample_is_seeded_masked_and_matches_greedy(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"] * 4)
    a = lm.sample(model, tok, p, pm, 8, generator=torch.Generator().manual_seed(0))
    b = lm.sample(model, tok, p, pm, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ids, mask = a
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # ones, then zeros
        assert tok.eos_token_id not in row[:n - 1]  # EOS only as the last masked token
    # a tiny temperature is greedy decoding: compare with argmax over full (uncached) forwards
    ids, mask = lm.sample(model, tok, p[:2], pm[:2], 4, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    seq, seq_mask = p[:2], pm[:2]
    for t in range(ids.shape[1]):
        pos = (seq_mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            nxt = model(input_ids=seq, attention_mask=seq_mask, position_ids=pos).logits[:, -1].argmax(-1)
        alive = mask[:, t].bool()
        assert torch.equal(ids[alive, t], nxt[alive])
        seq = torch.cat([seq, ids[:, t:t + 1]], 1)
        seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.sample(model, tok, p, pm, 0)


def test_distinct_n():
    assert lm.distinct_n(["a b a b"], 1) == 0.5
    assert lm.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert lm.distinct_n(["a b", "a b"], 2) == 0.5
    assert lm.distinct_n(["a"], 2) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        lm.distinct_n(["a"], 0)


def test_save_load_round_trip(tmp_path, tok, model):
    lm.save_pretrained(model, tok, tmp_path)
    model2, tok2 = lm.load_causal_lm(tmp_path, device="cpu")
    p, pm = lm.encode_prompts(tok2, ["review of the movie :"])
    r, rm = lm.encode_responses(tok2, ["it was good ."])
    assert torch.equal(p, lm.encode_prompts(tok, ["review of the movie :"])[0])
    assert torch.allclose(lm.token_logprobs(model2.eval(), p, pm, r, rm), lm.token_logprobs(model, p, pm, r, rm))
    assert tok2.pad_token_id == tok.pad_token_id and tok2.eos_token_id == tok.eos_token_id


def test_get_device():
    assert lm.get_device("cpu") == torch.device("cpu")
    assert isinstance(lm.get_device(), torch.device)


def test_stack_pairs_pads_both_sides_to_one_width():
    import torch

    from rlnotes.lm import stack_pairs
    batch = dict(prompt_ids=torch.tensor([[7, 8]]), prompt_mask=torch.tensor([[1, 1]]),
                 chosen_ids=torch.tensor([[1, 2, 3]]), chosen_mask=torch.tensor([[1, 1, 1]]),
                 rejected_ids=torch.tensor([[4]]), rejected_mask=torch.tensor([[1]]))
    p, pm, r, rm = stack_pairs(batch, pad_id=0)
    assert p.tolist() == [[7, 8]] and pm.tolist() == [[1, 1]]
    assert r.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert rm.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_tiny_gpt2_seeds_only_its_own_weights(tok):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model = lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    torch.manual_seed(7)  # the former behaviour: reseed the global RNG, then build
    before = GPT2LMHeadModel(model.config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    other = lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, seed=8)
    assert not torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)


def test_tiny_gpt2_activation_and_attention(tok):
    fused = lm.tiny_gpt2(tok, seed=0).eval()
    python = lm.tiny_gpt2(tok, seed=0, activation="gelu_new").eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    assert fused.config._attn_implementation == "sdpa"
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), python.state_dict().values()))
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    a, b = lm.token_logprobs(fused, p, pm, r, rm), lm.token_logprobs(python, p, pm, r, rm)
    assert torch.allclose(a, b, atol=1e-5)  # the same formula: equal to float rounding
    with pytest.raises(ValueError, match="activation must be one of"):
        lm.tiny_gpt2(tok, activation="gelu_fancy")
    with pytest.raises(ValueError, match="multiple of n_head"):
        lm.tiny_gpt2(tok, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be >= 1"):
        lm.tiny_gpt2(tok, n_layer=0)


def test_sample_runs_one_forward_per_token(tok, model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(out.logits.shape[1]))
    try:
        p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"] * 4)
        ids, mask = lm.sample(model, tok, p, pm, 3, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    # the prompts' pass (last position's logits only), then one pass per new token but the last
    assert ids.shape[1] == 3 and calls == [1, 1, 1]


def _sample_without_cache(model, tok, p, pm, max_new_tokens, generator):
    """The definition: a full forward pass over [x; y_<t] for every row at every step, no cache."""
    seq, seq_mask, done, ids, alive = p, pm, torch.zeros(len(p), dtype=torch.bool), [], []
    for _ in range(max_new_tokens):
        pos = (seq_mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=seq, attention_mask=seq_mask, position_ids=pos).logits[:, -1]
        token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(1)
        token = token.masked_fill(done, tok.pad_token_id)
        ids.append(token)
        alive.append(~done)
        done = done | (token == tok.eos_token_id)
        if bool(done.all()):
            break
        seq = torch.cat([seq, token[:, None]], 1)
        seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], 1)
    return torch.stack(ids, 1), torch.stack(alive, 1).long()


def test_sample_drops_finished_rows_and_matches_the_uncached_definition(task, tok, model):
    from rlnotes import sft

    trained = copy.deepcopy(model)
    sft.train_sft(trained, tok, *task.sft_corpus(512, 0), steps=40)  # now it ends responses with EOS
    trained = trained.double().eval()  # float64: cached and uncached passes agree far below any draw's margin
    p, pm = lm.encode_prompts(tok, task.prompts(24, 5))
    sizes = []
    handle = trained.register_forward_hook(lambda module, args, out: sizes.append(out.logits.shape[0]))
    try:
        ids, mask = lm.sample(trained, tok, p, pm, 8, generator=torch.Generator().manual_seed(3))
    finally:
        handle.remove()
    ref_ids, ref_mask = _sample_without_cache(trained, tok, p, pm, 8, torch.Generator().manual_seed(3))
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # rows finished at different steps
    # the rows still going are always in the pass; finished ones leave once they are a quarter of it
    assert sizes[0] == 24 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 24
    previous = 24
    for t, size in enumerate(sizes[1:]):
        going = int((lengths > t + 1).sum())
        assert size >= going
        assert size == (max(2, going) if 4 * going <= 3 * previous else previous)
        previous = size


def test_response_logits_keeps_only_the_response_positions(tok, model):
    """The output layer runs on the last T + 1 positions only; the logits equal the full forward's
    slice at positions P-1 .. P+T-2, and a model whose forward lacks logits_to_keep gets the slice."""
    p, pm = lm.encode_prompts(tok, ["phone review :", "review of the movie :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "bad ."])
    ids, mask, positions = lm._joint(p, pm, r, rm)
    full = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    P, T = p.shape[1], r.shape[1]
    torch.testing.assert_close(lm.response_logits(model, p, pm, r, rm), full[:, P - 1:P + T - 1])
    assert lm._takes_logits_to_keep(type(model))

    class Plain(torch.nn.Module):  # a forward with no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask, position_ids, output_hidden_states=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    assert not lm._takes_logits_to_keep(Plain)
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


def test_sample_k_per_prompt_runs_each_prompt_once(tok, model):
    """k samples per prompt: the same draws as sampling the prompts repeated k times, with one
    prompt pass over B rows, not k B."""
    p, pm = lm.encode_prompts(tok, ["phone review :", "review of the movie :", "book review :"])
    repeated = lm.sample(model, tok, p.repeat_interleave(4, 0), pm.repeat_interleave(4, 0), 6,
                         generator=torch.Generator().manual_seed(3))
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(len(kw["input_ids"])), with_kwargs=True)
    grouped = lm.sample(model, tok, p, pm, 6, generator=torch.Generator().manual_seed(3), k=4)
    hook.remove()
    assert rows[0] == 3 and all(r <= 12 for r in rows[1:])
    for a, b in zip(repeated, grouped):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k must be"):
        lm.sample(model, tok, p, pm, 6, k=0)


def test_cache_with_room_writes_in_place_and_equals_the_growing_cache(tok, model):
    """_with_room: the keys and values each step appends are written into the buffer (no copy of the
    cache), equal to transformers' DynamicLayer's; rows can be dropped; past the room it grows."""
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "game review :", "phone review :"])
    pos = (pm.cumsum(1) - 1).clamp(min=0)
    caches = []
    for room in (None, 2):
        out = model(input_ids=p, attention_mask=pm, position_ids=pos, use_cache=True)
        cache = lm._cache_kwargs(model, out)
        if room:
            cache = {k: lm._with_room(c, room) for k, c in cache.items()}
        caches.append((out, cache))
    (_, plain), (_, roomy) = caches
    layer = next(iter(roomy.values())).layers[0]
    assert type(layer).__name__ == "GrowingLayer" and layer.room_keys.shape[-2] == p.shape[1] + 2
    buffer = layer.room_keys.data_ptr()
    mask = pm
    for step in range(3):   # the third step is past the room
        token = torch.full((len(p), 1), 5)
        mask = torch.cat([mask, torch.ones(len(p), 1, dtype=mask.dtype)], 1)
        outs = [model(input_ids=token, attention_mask=mask, position_ids=pos[:, -1:] + 1 + step, use_cache=True, **c)
                for c in (plain, roomy)]
        assert torch.equal(outs[0].logits, outs[1].logits)
        plain, roomy = (lm._cache_kwargs(model, o) for o in outs)
        a, b = next(iter(plain.values())).layers[0], next(iter(roomy.values())).layers[0]
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert (layer.room_keys.data_ptr() == buffer) == (step < 2)
    rows = torch.tensor([2, 0])
    for c in (plain, roomy):
        lm._select_rows(next(iter(c.values())), rows)
    a, b = next(iter(plain.values())).layers[1], next(iter(roomy.values())).layers[1]
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for c in (plain, roomy):   # keys replaced from outside the layer: it falls back to growing by copies
        lm._repeat_rows(next(iter(c.values())), 2)
    outs = [model(input_ids=torch.full((4, 1), 7), attention_mask=torch.ones(4, mask.shape[1] + 1, dtype=mask.dtype),
                  position_ids=torch.full((4, 1), 9), use_cache=True, **c) for c in (plain, roomy)]
    assert torch.equal(outs[0].logits, outs[1].logits)
    legacy = ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)),)
    assert lm._with_room(legacy, 4) is legacy  # transformers 4's tuples: left as they are


def test_bf16_autocast_only_on_gpus_with_bf16_hardware(monkeypatch):
    # A T4 (compute capability 7.5) emulates bf16: it gets float32, even though
    # torch.cuda.is_bf16_supported() answers True there; an A100 (8.0) gets bf16 autocast.
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not lm.bf16_hardware(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert lm.bf16_hardware(cuda)
    assert not lm.bf16_hardware(torch.device("cpu"))


# ------------------------------------------------------------- bad input

def test_sample_refuses_right_padded_prompts(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    right = torch.stack([p[1].roll(-2), p[0]]), torch.stack([pm[1].roll(-2), pm[0]])  # row 0: [x, x, x, pad, pad]
    with pytest.raises(ValueError, match="prompt_mask must be LEFT-padded"):
        lm.sample(model, tok, *right, 4, generator=torch.Generator().manual_seed(0))
    ids, mask = lm.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0))  # left-padded: runs
    assert ids.shape == mask.shape == (2, mask.shape[1])


def test_sample_checks_ids_temperature_and_batch(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    with pytest.raises(TypeError, match="prompt_ids must hold integer token ids, got torch.float32"):
        lm.sample(model, tok, p.float(), pm, 4)
    with pytest.raises(ValueError, match=r"prompt_ids must be token ids in \[0, 78\) .* from 1000 to"):
        lm.sample(model, tok, p + 1000, pm, 4)
    with pytest.raises(ValueError, match=r"prompt_ids must be token ids in \[0, 78\) .* from -100 to"):
        lm.sample(model, tok, p - 100, pm, 4)
    with pytest.raises(ValueError, match="prompt_ids must hold at least one prompt, got an empty batch"):
        lm.sample(model, tok, p[:0], pm[:0], 4)
    with pytest.raises(TypeError, match=r"prompt_ids must be a 2-D tensor \[B, length\], got shape \(5,\)"):
        lm.sample(model, tok, p[0], pm[0], 4)
    with pytest.raises(ValueError, match=r"temperature must be >= 1e-06 \(MIN_TEMPERATURE.*got 1e-40"):
        lm.sample(model, tok, p, pm, 4, temperature=1e-40)
    with pytest.raises(TypeError, match="temperature must be a number, got True"):
        lm.sample(model, tok, p, pm, 4, temperature=True)
    with pytest.raises(ValueError, match="temperature must be >= 1e-06"):
        lm.token_logprobs(model, p, pm, *lm.encode_responses(tok, ["good .", "bad ."]), temperature=1e-40)
    # the valid neighbours: int32 ids draw what int64 ids draw; the floor itself is allowed (and greedy)
    a = lm.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0))
    b = lm.sample(model, tok, p.int(), pm, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    greedy = [lm.sample(model, tok, p, pm, 4, temperature=lm.MIN_TEMPERATURE,
                        generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(greedy[0][0], greedy[1][0])


def test_a_tokenizer_without_pad_or_eos_is_named(tok, model):
    no_pad, no_eos = copy.deepcopy(tok), copy.deepcopy(tok)
    no_pad.pad_token, no_eos.eos_token = None, None
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    with pytest.raises(ValueError, match=r"tokenizer.pad_token_id is None\): set tokenizer.pad_token"):
        lm.encode_prompts(no_pad, ["review of the movie :"])
    with pytest.raises(ValueError, match=r"tokenizer.pad_token_id is None\): set tokenizer.pad_token"):
        lm.sample(model, no_pad, p, pm, 4)
    with pytest.raises(ValueError, match=r"tokenizer.eos_token_id is None\): set tokenizer.eos_token"):
        lm.encode_responses(no_eos, ["good ."])
    with pytest.raises(ValueError, match=r"tokenizer.eos_token_id is None\): set tokenizer.eos_token"):
        lm.sample(model, no_eos, p, pm, 4)
    no_pad.pad_token = no_pad.eos_token  # what the message suggests: then it encodes (EOS as padding)
    ids, mask = lm.encode_prompts(no_pad, ["review of the movie :", "phone review :"])
    assert torch.equal(mask, pm) and ids[1, 0].item() == tok.eos_token_id


def test_load_causal_lm_names_a_missing_folder_without_asking_the_hub(tmp_path, monkeypatch, tok, model):
    import huggingface_hub
    import transformers

    calls = []

    def offline(source, **kwargs):
        calls.append(source)
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no such folder 'my_saved_model' .*a hub model is named 'org/name'"):
        lm.load_causal_lm("my_saved_model")
    assert calls == []  # the hub was never asked
    # the neighbours: the hub's names without an org, 'org/name' ids and names in the hub cache go to the hub
    snapshot = tmp_path / "hub" / "models--my_cached_model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--my_cached_model" / "refs").mkdir()
    (tmp_path / "hub" / "models--my_cached_model" / "refs" / "main").write_text("abc")
    for name in ("gpt2", "openai-community/gpt2", "my_cached_model"):
        with pytest.raises(OSError, match="offline"):
            lm.load_causal_lm(name)
    assert calls == ["gpt2", "openai-community/gpt2", "my_cached_model"]
    monkeypatch.undo()
    lm.save_pretrained(model, tok, tmp_path / "my_saved_model")  # once saved there, the same name loads it
    monkeypatch.chdir(tmp_path)
    assert lm.load_causal_lm("my_saved_model", device="cpu")[1].pad_token_id == tok.pad_token_id


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


def test_prompts_are_bounded(task):
    with pytest.raises(ValueError, match=r"n must be <= 1000000 \(MAX_PROMPTS; the pool holds 48 distinct "
                                         r"prompts, drawn with replacement\), got 1000000000"):
        task.prompts(10**9, 0)
    with pytest.raises(ValueError, match="n must be <= 1000000 .*pool holds 12 distinct prompts"):
        task.sft_corpus(10**9, 0, split="test")
    assert len(task.prompts(lm.MAX_PROMPTS, 0, "test")) == lm.MAX_PROMPTS  # the bound itself is allowed


def test_seeds_are_checked_by_name(task, tok):
    import numpy as np

    for call in (lambda s: lm.tiny_gpt2(tok, n_layer=1, n_embd=8, n_head=2, seed=s),
                 lambda s: task.prompts(3, s), lambda s: task.sft_corpus(3, s)):
        with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
            call(-1)
        with pytest.raises(TypeError, match="seed must be an integer, got '0'"):
            call("0")
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*63, got 18446744073709551616"):
        lm.tiny_gpt2(tok, n_layer=1, n_embd=8, n_head=2, seed=2**64)
    # the trainers draw prompts with seed * 100_003 + step, which may pass 2**63
    assert task.prompts(3, 2**64) == task.prompts(3, 2**64) and len(task.sft_corpus(2, 2**70)[1]) == 2
    small = dict(n_layer=1, n_embd=8, n_head=2)
    a, b = lm.tiny_gpt2(tok, seed=3, **small), lm.tiny_gpt2(tok, seed=np.int64(3), **small)  # a NumPy integer
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert task.prompts(3, np.int64(5)) == task.prompts(3, 5) and len(task.prompts(3, 2**63 - 1)) == 3


# ------------------------------------------------------------- texts, empty prompts, the context, the batch

@pytest.fixture(scope="module")
def batch(tok):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    return p, pm, r, rm


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


# ------------------------------------------------------------- loading and saving: folders checked, no remote code

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


def test_save_onto_a_file_is_an_error(tmp_path, tok, model):
    target = tmp_path / "model.bin"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="model.bin' is a file"):
        lm.save_pretrained(model, tok, target)
    assert target.read_text() == "not a folder"


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
        assert lm.response_logits(lm.tiny_gpt2(tok).double(), p, pm, r, rm).dtype == torch.float64
        assert lm.response_logits(lm.tiny_gpt2(tok).to(torch.bfloat16), p, pm, r, rm).dtype == torch.float32
        assert lm.response_logits(lm.tiny_gpt2(tok), p, pm, r, rm).dtype == torch.float32


def test_a_prompt_mask_not_of_0s_and_1s_is_refused(model, tok, batch):  # fix27 item 12
    p, pm, r, rm = batch
    with pytest.raises(ValueError, match=r"prompt_mask must hold only 0 and 1 .*got a value of 2"):
        lm.response_logits(model, p, pm * 2, r, rm)
    with pytest.raises(ValueError, match=r"prompt_mask must hold only 0 and 1 .*got a value of 2"):
        lm.sample(model, tok, p, pm * 2)
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
