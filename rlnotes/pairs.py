"""Preference pairs: the token tensors of (x, y_w, y_l) and their log-probabilities, for every
pairwise preference trainer (``rlnotes.dpo.train``, with either loss type) and its helpers.

``check_pairs`` checks the tensors of ``rlnotes.reward.Preferences.encode`` (``PAIR_KEYS``),
``trim_pairs`` takes some pairs without their all-padding columns, ``pair_logps`` gives
log pi(y_w|x) and log pi(y_l|x) in one pass (each prompt run once), ``reference_logps`` the
frozen reference's for a whole data set, which ``check_ref_logps`` checks when a caller reuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .lm import group_response_logits, logprobs_from_logits
from .trainer import check_model, kept_as_found
from .utils import check_finite, check_positive_int

__all__ = ["PAIR_KEYS", "check_pairs", "trim_pairs", "pair_logps", "scoring_batch_size", "reference_logps",
           "check_ref_logps"]


PAIR_KEYS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


def check_pairs(data: dict, name: str = "data") -> int:
    """The number of pairs in ``data``, the preference tensors of ``rlnotes.reward.Preferences.encode``.

    Refused, naming ``name``: anything but a dict (``TypeError``), a dict without the keys
    ``PAIR_KEYS`` (``ValueError``), values that are not 2-D integer torch tensors (``TypeError``),
    a mask of another shape than its ids, or no pairs, or sides of different lengths, or a pair whose
    chosen or rejected response has no token (its mask row sums to 0) (``ValueError``).
    """
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a dict with the tensors {PAIR_KEYS} (e.g. "
                        f"rlnotes.reward.Preferences.encode(tokenizer)), got {type(data).__name__}")
    missing = [k for k in PAIR_KEYS if k not in data]
    if missing:
        raise ValueError(f"{name} must be a dict with the tensors {PAIR_KEYS} "
                         f"(e.g. rlnotes.reward.Preferences.encode(tokenizer)); missing {missing}")
    for k in PAIR_KEYS:
        t = data[k]
        if not torch.is_tensor(t) or t.dim() != 2 or t.is_floating_point() or t.is_complex():
            got = f"a {t.dim()}-D {t.dtype} tensor" if torch.is_tensor(t) else type(t).__name__
            raise TypeError(f"{name}[{k!r}] must be a 2-D integer torch.Tensor (one row per pair, as "
                            f"Preferences.encode makes it), got {got}")
    n = len(data["prompt_ids"])
    if n == 0 or any(len(data[k]) != n for k in PAIR_KEYS):
        raise ValueError(f"{name} must hold the same number (>= 1) of prompts, chosen and rejected responses, "
                         f"got {[len(data[k]) for k in PAIR_KEYS]}")
    for side in ("prompt", "chosen", "rejected"):
        if data[f"{side}_ids"].shape != data[f"{side}_mask"].shape:
            raise ValueError(f"{name}['{side}_mask'] must have the shape of {name}['{side}_ids'] "
                             f"{tuple(data[f'{side}_ids'].shape)}, got {tuple(data[f'{side}_mask'].shape)}")
    for side in ("chosen", "rejected"):
        empty = data[f"{side}_mask"].sum(1) == 0
        if bool(empty.any()):
            i = int(empty.nonzero()[0, 0])
            raise ValueError(f"{name}['{side}_mask'] must mark at least one token per pair (a response of length "
                             f">= 1, as Preferences.encode makes it with its EOS), got an empty {side} response "
                             f"at pair {i}")
    return n


def trim_pairs(data: dict, idx) -> dict:
    """The pairs at ``idx``, with all-padding columns removed (prompts are left-padded, responses right-padded).

    ``idx``: a slice, or integer positions (a list, array or 1-D tensor) in [-n, n) for ``n`` pairs, selecting at
    least one pair; anything else is refused naming ``idx`` (``TypeError`` for the kind, ``ValueError`` for values).
    """
    b = {k: data[k][_check_idx(idx, len(data["prompt_ids"]))] for k in PAIR_KEYS}
    start = b["prompt_ids"].shape[1] - max(int(b["prompt_mask"].sum(0).ne(0).sum()), 1)
    b["prompt_ids"], b["prompt_mask"] = b["prompt_ids"][:, start:], b["prompt_mask"][:, start:]
    for side in ("chosen", "rejected"):
        width = max(int(b[f"{side}_mask"].sum(1).max()), 1)
        b[f"{side}_ids"], b[f"{side}_mask"] = b[f"{side}_ids"][:, :width], b[f"{side}_mask"][:, :width]
    return b


def _check_idx(idx, n: int):
    """``idx`` as ``trim_pairs`` takes it: a slice, or integer positions in [-n, n), at least one pair."""
    if isinstance(idx, slice):
        if not len(range(n)[idx]):
            raise ValueError(f"idx must select at least one of the {n} pairs, got {idx} (empty)")
        return idx
    try:
        t = idx if torch.is_tensor(idx) else torch.as_tensor(idx)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"idx must be a slice or integer positions of pairs, got {type(idx).__name__}") from None
    if not t.numel():
        raise ValueError("idx must select at least one pair, got no positions")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.ndim != 1:
        raise TypeError(f"idx must be a slice or a 1-D sequence of integer positions of pairs, got a {t.ndim}-D "
                        f"{t.dtype} {type(idx).__name__}")
    if int(t.min()) < -n or int(t.max()) >= n:
        raise ValueError(f"idx must hold positions in [-{n}, {n}) (the {n} pairs), got values from {int(t.min())} "
                         f"to {int(t.max())}")
    return idx


def stack_pairs(batch: dict, pad_id: int):
    """A batch of B preference pairs as B prompts and 2B responses, y_w then y_l for each prompt.

    ``batch`` holds ``prompt_ids/prompt_mask`` and ``chosen_ids/chosen_mask``,
    ``rejected_ids/rejected_mask``; the two response sides are right-padded to a common width.
    Returns (prompt_ids [B, P], prompt_mask, response_ids [2B, T], response_mask) in the
    prompt-major order of ``group_response_logits``, so that one pass, with each prompt run once,
    scores both responses of every pair (the reward model of chapter 4, DPO in chapter 5).
    """
    keys = [f"{s}_{t}" for s in ("prompt", "chosen", "rejected") for t in ("ids", "mask")]
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        got = f"a dict with {sorted(batch)}" if isinstance(batch, dict) else type(batch).__name__
        raise (ValueError if isinstance(batch, dict) else TypeError)(
            f"batch must be a dict with the tensors {keys} (as Preferences.encode makes it), got {got}")
    width = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])

    def pairs(side: str, value):  # [B, 2, T] -> [2B, T]: row 2i is pair i's y_w, row 2i + 1 its y_l
        chosen, rejected = (F.pad(batch[f"{s}_{side}"], (0, width - batch[f"{s}_{side}"].shape[1]), value=value)
                            for s in ("chosen", "rejected"))
        return torch.stack([chosen, rejected], dim=1).flatten(0, 1)

    return batch["prompt_ids"], batch["prompt_mask"], pairs("ids", pad_id), pairs("mask", 0)


def pair_logps(model, batch: dict, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_w|x), log pi(y_l|x)), each [B], in one pass over the 2B sequences [x; y_w] and [x; y_l],
    each prompt run once (``rlnotes.lm.group_response_logits``).

    Each is the sum of the response tokens' log-probabilities (prompt and padding masked), the four
    numbers per pair that Eq. 7 needs (with the reference's). On a CUDA GPU with bf16 support the
    pass runs under bf16 autocast, for the policy and the reference alike (so that their log-ratio
    starts at exactly 0); the result is float32. ``batch`` is checked as ``check_pairs`` checks data.
    """
    check_pairs(batch, "batch")
    p, pm, ids, mask = stack_pairs(batch, pad_id)
    logps = logprobs_from_logits(group_response_logits(model, p, pm, ids, mask), ids, mask).sum(dim=1)
    return logps.float().view(-1, 2).unbind(1)


def scoring_batch_size(batch_size: int | None) -> int:
    """``batch_size`` (checked: a positive int), or the default for scoring pairs without training, 512 per pass.

    On a CPU, 64 would be up to 20% faster at width 256 (bench/ref_batch_size.py), but the padded
    width of a pass changes the float rounding of every log-probability by ~1e-9: at 512 the
    reference passes share the training batches' widths often enough that DPO's first step sees
    pi = pi_ref exactly (loss log 2, every margin 0), which chapter 5 shows. The default keeps that.
    """
    if batch_size is None:
        return 512
    return check_positive_int("batch_size", batch_size)


@torch.no_grad()
def reference_logps(ref, data: dict, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi_ref(y_w|x), log pi_ref(y_l|x)) for every pair of ``data``: computed once, the reference is frozen.

    ``batch_size`` pairs per forward pass (None: the default, ``scoring_batch_size``). ``ref`` runs
    in eval mode and is handed back in the modes it came in.
    """
    check_model("ref", ref)
    n = check_pairs(data)
    batch_size = scoring_batch_size(batch_size)
    chosen, rejected = [], []
    with kept_as_found(ref):
        ref.eval()
        for start in range(0, n, batch_size):
            c, r = pair_logps(ref, trim_pairs(data, slice(start, start + batch_size)))
            chosen.append(c)
            rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def check_ref_logps(ref_logps, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref_logps`` if it is what ``reference_logps`` returns for ``n`` pairs: two finite tensors of
    shape (n,); ``TypeError`` if it is not a pair of tensors, ``ValueError`` for a shape or a NaN."""
    if not isinstance(ref_logps, (tuple, list)) or len(ref_logps) != 2 or not all(map(torch.is_tensor, ref_logps)):
        raise TypeError(f"ref_logps must be two tensors (chosen, rejected), as reference_logps returns them, "
                        f"got {type(ref_logps).__name__}")
    ref_c, ref_r = ref_logps
    if ref_c.shape != (n,) or ref_r.shape != (n,):
        raise ValueError(f"ref_logps must be two tensors of shape ({n},), one per pair of data (reference_logps), "
                         f"got {tuple(ref_c.shape)} and {tuple(ref_r.shape)}")
    check_finite("ref_logps", torch.stack([ref_c, ref_r]))
    return ref_c, ref_r
