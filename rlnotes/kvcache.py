"""The KV cache of sampling and grouped scoring: every use of ``transformers``' cache internals is fenced in here.

``sampling.sample`` and ``lm.group_response_logits`` / ``lm.last_hidden`` reuse the keys and values of a
prompt's pass; this module is the one place that knows how ``transformers`` stores them. Public API:

- ``cache_kwargs(model, out)``: the cache of a forward's output, as the keyword the model takes back.
- ``with_room(cache, room)``: the cache with room for ``room`` more positions, written in place.
- ``repeat_rows(cache, k)`` / ``select_rows(cache, rows)``: repeat each batch row k times / keep some rows.
- ``last_logits_kwargs(model, n)`` / ``takes_logits_to_keep(model_class)``: the output layer on the last
  n positions only, where the model can.

The ``transformers`` internals relied on, and what breaks if they change:

- ``transformers.cache_utils.DynamicLayer`` (transformers 5), its attributes ``keys``, ``values`` and
  ``is_initialized``, and the cache's list ``layers``: ``with_room`` reassigns each layer's ``__class__`` to
  a subclass whose ``update(key_states, value_states, ...)`` writes into a padded buffer and returns views,
  and whose ``batch_select_indices`` slices that buffer. If ``DynamicLayer`` is missing, ``with_room``
  returns the cache as it is (transformers 4's tuples); if its attributes or ``update``'s contract change
  (new state in the layer, a different return), the cached passes may go wrong: ``tests/test_kvcache.py``
  checks the roomy cache against the plain one, and ``tests/test_sampling.py`` checks that sampling with
  the cache draws the same tokens as full passes without it.
- The cache methods ``batch_repeat_interleave(k)`` and ``batch_select_indices(rows)``, which edit the cache
  in place (transformers 4 returned tuples of tensors instead: handled as tuples).
- The forward's keyword for the cache, ``cache`` (recent transformers 5 releases) or ``past_key_values``
  (before), and the output attribute of the same name; and the keyword ``logits_to_keep``
  (transformers >= 4.50), found by ``inspect.signature``.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from .utils import check_positive_int

__all__ = ["cache_kwargs", "with_room", "repeat_rows", "select_rows", "last_logits_kwargs",
           "takes_logits_to_keep"]


def cache_kwargs(model, out) -> dict:
    """The KV cache of ``out`` as the keyword ``model`` takes: ``cache`` in recent transformers 5
    releases, ``past_key_values`` before (as on Colab images that still ship transformers 4)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def last_logits_kwargs(model, n: int = 1) -> dict:
    """Ask for the last ``n`` positions' logits only, where the model can (``logits_to_keep`` in
    transformers >= 4.50): a prompt's other positions would cost B x P x V floats for nothing.
    An empty dict for a model whose forward has no ``logits_to_keep`` (it computes them all)."""
    return {"logits_to_keep": n} if takes_logits_to_keep(type(model)) else {}


@functools.lru_cache(maxsize=None)
def takes_logits_to_keep(model_class) -> bool:
    """Whether a model class's forward computes its output layer on the last k positions only."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def repeat_rows(cache, k: int):
    """Each batch row of a KV cache k times in a row (a ``Cache`` object, or transformers 4's tuples).
    ``TypeError`` naming ``cache`` for anything else, and ``utils.check_positive_int``'s errors for ``k``."""
    if not hasattr(cache, "batch_repeat_interleave") and not isinstance(cache, (tuple, list)):
        raise TypeError(f"cache must be a KV cache (a transformers Cache, or a tuple of per-layer (key, value) "
                        f"tensors), got {type(cache).__name__}")
    k = check_positive_int("k", k)
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(k)
        return cache
    return tuple(tuple(t.repeat_interleave(k, 0) for t in layer) for layer in cache)


def select_rows(cache, rows: torch.Tensor):
    """Keep only batch ``rows`` of a KV cache (a ``Cache`` object, or transformers 4's tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return tuple(tuple(t[rows] for t in layer) for layer in cache)


@functools.lru_cache(maxsize=None)
def _growing_layer():
    """transformers' ``DynamicLayer`` with its keys and values kept in a buffer that has room for more
    positions: ``update`` writes the new ones in place and returns views, where ``DynamicLayer``
    concatenates (a copy of the whole cache, every layer, every step: quadratic in the length).
    None where transformers has no ``DynamicLayer`` (transformers 4)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            n, m = self.keys.shape[-2], key_states.shape[-2]
            if n + m > self.room_keys.shape[-2] or self.keys.data_ptr() != self.room_keys.data_ptr():
                # out of room, or keys replaced from outside (e.g. batch_repeat_interleave): grow as DynamicLayer does
                self.keys = self.room_keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = self.room_values = torch.cat([self.values, value_states], dim=-2)
                return self.keys, self.values
            self.room_keys[:, :, n:n + m] = key_states
            self.room_values[:, :, n:n + m] = value_states
            self.keys, self.values = self.room_keys[:, :, :n + m], self.room_values[:, :, :n + m]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            n = self.keys.shape[-2]
            self.room_keys, self.room_values = self.room_keys[indices], self.room_values[indices]
            self.keys, self.values = self.room_keys[:, :, :n], self.room_values[:, :, :n]

    return GrowingLayer


def with_room(cache, room: int):
    """``cache`` with room for ``room`` more positions in each layer (a growing subclass of transformers'
    ``DynamicLayer``), where its layers are plain ones; any other cache is returned as it is."""
    growing = _growing_layer()
    layers = getattr(cache, "layers", None)
    if growing is None or not isinstance(layers, list) or not all(
            type(layer) is growing.__base__ and getattr(layer, "is_initialized", False) for layer in layers):
        return cache
    for layer in layers:
        keys, values = (F.pad(t, (0, 0, 0, room)) for t in (layer.keys, layer.values))  # [B, heads, n + room, d]
        n = layer.keys.shape[-2]
        layer.__class__ = growing
        layer.room_keys, layer.room_values = keys, values
        layer.keys, layer.values = keys[:, :, :n], values[:, :, :n]
    return cache
