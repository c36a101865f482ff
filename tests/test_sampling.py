"""rlnotes.sampling: seeded, masked sampling with the KV cache, equal to full passes without it; k samples
per prompt; what it refuses, naming the argument."""

import copy

import pytest
import torch

from rlnotes import lm, sampling


def test_sample_is_seeded_masked_and_matches_greedy(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"] * 4)
    a = sampling.sample(model, tok, p, pm, 8, generator=torch.Generator().manual_seed(0))
    b = sampling.sample(model, tok, p, pm, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ids, mask = a
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)  # ones, then zeros
        assert tok.eos_token_id not in row[:n - 1]  # EOS only as the last masked token
    # a tiny temperature is greedy decoding: compare with argmax over full (uncached) forwards
    ids, mask = sampling.sample(model, tok, p[:2], pm[:2], 4, temperature=1e-4,
                                generator=torch.Generator().manual_seed(1))
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
        sampling.sample(model, tok, p, pm, 0)


def test_sample_runs_one_forward_per_token(tok, model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(out.logits.shape[1]))
    try:
        p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"] * 4)
        ids, mask = sampling.sample(model, tok, p, pm, 3, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    # the prompts' pass (last position's logits only), then one pass per new token but the last
    assert ids.shape[1] == 3 and calls == [1, 1, 1]


def _sample_without_cache(model, tok, p, pm, max_new_tokens, generator, temperature=1.0):
    """The definition: a full forward pass over [x; y_<t] for every row at every step, no cache."""
    seq, seq_mask, done, ids, alive = p, pm, torch.zeros(len(p), dtype=torch.bool), [], []
    for _ in range(max_new_tokens):
        pos = (seq_mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=seq, attention_mask=seq_mask, position_ids=pos).logits[:, -1]
        logits = logits.float() if temperature == 1.0 else logits.float() / temperature
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        token = token.masked_fill(done, tok.pad_token_id)
        ids.append(token)
        alive.append(~done)
        done = done | (token == tok.eos_token_id)
        if bool(done.all()):
            break
        seq = torch.cat([seq, token[:, None]], 1)
        seq_mask = torch.cat([seq_mask, torch.ones_like(seq_mask[:, :1])], 1)
    return torch.stack(ids, 1), torch.stack(alive, 1).long()


@pytest.fixture(scope="module")
def trained(task, tok, model):
    """The test model after 40 SFT steps (it now ends responses with EOS, at different steps), in float64:
    cached and uncached passes agree far below any draw's margin."""
    from rlnotes import sft

    trained = copy.deepcopy(model)
    sft.train(task.sft_corpus(512, 0), model=trained, tokenizer=tok, steps=40)
    return trained.double().eval()


def test_sample_drops_finished_rows_and_matches_the_uncached_definition(task, tok, trained):
    p, pm = lm.encode_prompts(tok, task.prompts(24, 5))
    sizes = []
    handle = trained.register_forward_hook(lambda module, args, out: sizes.append(out.logits.shape[0]))
    try:
        ids, mask = sampling.sample(trained, tok, p, pm, 8, generator=torch.Generator().manual_seed(3))
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


@pytest.mark.parametrize("temperature, k", [(0.7, 1), (1.3, 3)])
def test_sample_with_the_cache_draws_the_tokens_of_full_passes_without_it(task, tok, trained, temperature, k):
    """The KV cache (rlnotes.kvcache: room written in place, rows repeated for k samples, finished rows
    dropped) changes the work, never the draw: the same tokens and masks as full passes without a cache
    on the prompts repeated k times, from the same generator state."""
    p, pm = lm.encode_prompts(tok, task.prompts(10, 7))
    ids, mask = sampling.sample(trained, tok, p, pm, 8, temperature=temperature, k=k,
                                generator=torch.Generator().manual_seed(4))
    ref_ids, ref_mask = _sample_without_cache(trained, tok, p.repeat_interleave(k, 0), pm.repeat_interleave(k, 0), 8,
                                              torch.Generator().manual_seed(4), temperature)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    assert mask.sum(1).min() < mask.sum(1).max()  # rows finished at different steps


def test_sample_k_per_prompt_runs_each_prompt_once(tok, model):
    """k samples per prompt: the same draws as sampling the prompts repeated k times, with one
    prompt pass over B rows, not k B."""
    p, pm = lm.encode_prompts(tok, ["phone review :", "review of the movie :", "book review :"])
    repeated = sampling.sample(model, tok, p.repeat_interleave(4, 0), pm.repeat_interleave(4, 0), 6,
                               generator=torch.Generator().manual_seed(3))
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(len(kw["input_ids"])), with_kwargs=True)
    grouped = sampling.sample(model, tok, p, pm, 6, generator=torch.Generator().manual_seed(3), k=4)
    hook.remove()
    assert rows[0] == 3 and all(r <= 12 for r in rows[1:])
    for a, b in zip(repeated, grouped):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k must be"):
        sampling.sample(model, tok, p, pm, 6, k=0)


# ------------------------------------------------------------- what sampling refuses

def test_sample_refuses_right_padded_prompts(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    right = torch.stack([p[1].roll(-2), p[0]]), torch.stack([pm[1].roll(-2), pm[0]])  # row 0: [x, x, x, pad, pad]
    with pytest.raises(ValueError, match="prompt_mask must be LEFT-padded"):
        sampling.sample(model, tok, *right, 4, generator=torch.Generator().manual_seed(0))
    ids, mask = sampling.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0))  # left-padded: runs
    assert ids.shape == mask.shape == (2, mask.shape[1])


def test_sample_checks_ids_temperature_and_batch(tok, model):
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    with pytest.raises(TypeError, match="prompt_ids must hold integer token ids, got torch.float32"):
        sampling.sample(model, tok, p.float(), pm, 4)
    with pytest.raises(ValueError, match=r"prompt_ids must be token ids in \[0, 78\) .* from 1000 to"):
        sampling.sample(model, tok, p + 1000, pm, 4)
    with pytest.raises(ValueError, match=r"prompt_ids must be token ids in \[0, 78\) .* from -100 to"):
        sampling.sample(model, tok, p - 100, pm, 4)
    with pytest.raises(ValueError, match="prompt_ids must hold at least one prompt, got an empty batch"):
        sampling.sample(model, tok, p[:0], pm[:0], 4)
    with pytest.raises(TypeError, match=r"prompt_ids must be a 2-D tensor \[B, length\], got shape \(5,\)"):
        sampling.sample(model, tok, p[0], pm[0], 4)
    with pytest.raises(ValueError, match=r"temperature must be >= 1e-06 \(MIN_TEMPERATURE.*got 1e-40"):
        sampling.sample(model, tok, p, pm, 4, temperature=1e-40)
    with pytest.raises(TypeError, match="temperature must be a number, got True"):
        sampling.sample(model, tok, p, pm, 4, temperature=True)
    with pytest.raises(ValueError, match="temperature must be >= 1e-06"):
        lm.token_logprobs(model, p, pm, *lm.encode_responses(tok, ["good .", "bad ."]), temperature=1e-40)
    # the valid neighbours: int32 ids draw what int64 ids draw; the floor itself is allowed (and greedy)
    a = sampling.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0))
    b = sampling.sample(model, tok, p.int(), pm, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    greedy = [sampling.sample(model, tok, p, pm, 4, temperature=lm.MIN_TEMPERATURE,
                              generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert torch.equal(greedy[0][0], greedy[1][0])


# ------------------------------------------------------------------ issue 27, round two: bad input

def test_sample_names_a_model_or_tokenizer_that_is_none(tok, model):
    p, pm = lm.encode_prompts(tok, ["review :", "phone review :"])
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got NoneType None"):
        sampling.sample(model, None, p, pm, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got NoneType"):
        sampling.sample(None, tok, p, pm, 4, generator=torch.Generator().manual_seed(0))


def test_sample_refuses_a_huge_k(tok, model):
    p, pm = lm.encode_prompts(tok, ["review :", "phone review :"])
    with pytest.raises(ValueError, match=r"k must be <= 1024 \(MAX_SAMPLES_PER_PROMPT, .*\), got 1000000"):
        sampling.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0), k=10**6)
    ids, mask = sampling.sample(model, tok, p, pm, 4, generator=torch.Generator().manual_seed(0),
                                k=sampling.MAX_SAMPLES_PER_PROMPT)
    assert ids.shape[0] == 2 * 1024 and mask.shape == ids.shape
