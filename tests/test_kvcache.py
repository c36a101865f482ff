"""rlnotes.kvcache: the KV cache with room (written in place, equal to transformers' growing cache), rows
repeated and selected, the output layer on the last positions only."""

import torch

from rlnotes import kvcache, lm


def test_cache_with_room_writes_in_place_and_equals_the_growing_cache(tok, model):
    """_with_room: the keys and values each step appends are written into the buffer (no copy of the
    cache), equal to transformers' DynamicLayer's; rows can be dropped; past the room it grows."""
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "game review :", "phone review :"])
    pos = (pm.cumsum(1) - 1).clamp(min=0)
    caches = []
    for room in (None, 2):
        out = model(input_ids=p, attention_mask=pm, position_ids=pos, use_cache=True)
        cache = kvcache.cache_kwargs(model, out)
        if room:
            cache = {k: kvcache.with_room(c, room) for k, c in cache.items()}
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
        plain, roomy = (kvcache.cache_kwargs(model, o) for o in outs)
        a, b = next(iter(plain.values())).layers[0], next(iter(roomy.values())).layers[0]
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert (layer.room_keys.data_ptr() == buffer) == (step < 2)
    rows = torch.tensor([2, 0])
    for c in (plain, roomy):
        kvcache.select_rows(next(iter(c.values())), rows)
    a, b = next(iter(plain.values())).layers[1], next(iter(roomy.values())).layers[1]
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for c in (plain, roomy):   # keys replaced from outside the layer: it falls back to growing by copies
        kvcache.repeat_rows(next(iter(c.values())), 2)
    outs = [model(input_ids=torch.full((4, 1), 7), attention_mask=torch.ones(4, mask.shape[1] + 1, dtype=mask.dtype),
                  position_ids=torch.full((4, 1), 9), use_cache=True, **c) for c in (plain, roomy)]
    assert torch.equal(outs[0].logits, outs[1].logits)
    legacy = ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)),)
    assert kvcache.with_room(legacy, 4) is legacy  # transformers 4's tuples: left as they are


def test_the_output_layer_runs_on_the_last_positions_only_where_the_model_can(model):
    """last_logits_kwargs asks for the last n positions' logits where the forward takes logits_to_keep
    (transformers >= 4.50), and for nothing where it does not (that model computes them all)."""
    assert kvcache.takes_logits_to_keep(type(model))
    assert kvcache.last_logits_kwargs(model) == {"logits_to_keep": 1}
    assert kvcache.last_logits_kwargs(model, 6) == {"logits_to_keep": 6}

    class Plain(torch.nn.Module):  # a forward with no logits_to_keep
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert not kvcache.takes_logits_to_keep(Plain) and kvcache.last_logits_kwargs(Plain()) == {}


def test_rows_of_a_transformers_4_cache(tok, model):
    """transformers 4's caches are tuples of (keys, values) per layer: rows repeated and selected as tensors;
    a ``Cache`` object is edited in place and returned."""
    keys = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    legacy = ((keys, keys + 1),)
    repeated = kvcache.repeat_rows(legacy, 2)
    assert torch.equal(repeated[0][0], keys.repeat_interleave(2, 0))
    assert torch.equal(repeated[0][1], (keys + 1).repeat_interleave(2, 0))
    picked = kvcache.select_rows(legacy, torch.tensor([1]))
    assert torch.equal(picked[0][0], keys[1:]) and torch.equal(picked[0][1], keys[1:] + 1)
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "game review :"])
    out = model(input_ids=p, attention_mask=pm, position_ids=(pm.cumsum(1) - 1).clamp(min=0), use_cache=True)
    (name, cache), = kvcache.cache_kwargs(model, out).items()
    assert name in ("cache", "past_key_values") and cache is getattr(out, name)
    before = cache.layers[0].keys.clone()
    assert kvcache.repeat_rows(cache, 3) is cache and torch.equal(cache.layers[0].keys, before.repeat_interleave(3, 0))
    assert kvcache.select_rows(cache, torch.tensor([0, 5])) is cache
    assert torch.equal(cache.layers[0].keys, before[[0, 1]])


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_repeat_rows_names_cache_and_k():
    import pytest
    with pytest.raises(TypeError, match=r"cache must be a KV cache .*got NoneType"):
        kvcache.repeat_rows(None, 2)
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        kvcache.repeat_rows((), 0)
