"""rlnotes.pairs: the preference tensors checked and trimmed, their log-probabilities in one pass
(``pair_logps``) and the reference's over a data set (``reference_logps``)."""

import pytest
import torch

from rlnotes import dpo, lm, models, pairs


def test_pair_logps_match_separate_sequence_logprobs(tiny):
    model, tok, data = tiny
    c, r = pairs.pair_logps(model, data)
    c_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["chosen_ids"], data["chosen_mask"])
    r_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["rejected_ids"],
                                  data["rejected_mask"])
    torch.testing.assert_close(c, c_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, r_alone, rtol=1e-5, atol=1e-5)
    # trimming all-padding columns and batching differently change nothing
    ref_all = pairs.reference_logps(model, data)
    ref_small = pairs.reference_logps(model, data, batch_size=3)
    torch.testing.assert_close(ref_all[0], c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref_small[1], ref_all[1], rtol=1e-5, atol=1e-5)
    assert ref_all[0].dtype == torch.float32 and ref_all[0].shape == (8,)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        pairs.reference_logps(model, data, batch_size=0)


def test_reference_logps_and_preference_metrics_restore_mixed_modes(tiny):
    _, tok, data = tiny
    model = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0).train()
    model.transformer.h[0].eval()
    modes = [m.training for m in model.modules()]          # the mixed modes, module by module
    pairs.reference_logps(model, data)
    dpo.preference_metrics(model, model, data, beta=0.1)
    assert [m.training for m in model.modules()] == modes
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module"):
        pairs.reference_logps(None, data)


def test_pair_logps_names_a_bad_batch(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match=r"batch must be a dict with the tensors .* missing \['rejected_mask'\]"):
        pairs.pair_logps(model, {k: v for k, v in data.items() if k != "rejected_mask"})


def test_check_pairs_counts_and_trim_pairs_drops_all_padding_columns(tiny):
    _, _, data = tiny
    assert pairs.check_pairs(data) == 8 and set(pairs.PAIR_KEYS) <= set(data)
    b = pairs.trim_pairs(data, torch.tensor([0, 2]))
    assert all(len(b[k]) == 2 for k in pairs.PAIR_KEYS)
    assert b["prompt_mask"][:, 0].any() and b["chosen_mask"][:, -1].any() and b["rejected_mask"][:, -1].any()
    for side in ("prompt", "chosen", "rejected"):   # the kept tokens are the same
        full = data[f"{side}_ids"][[0, 2]][data[f"{side}_mask"][[0, 2]].bool()]
        assert torch.equal(b[f"{side}_ids"][b[f"{side}_mask"].bool()], full)


def test_check_ref_logps_and_scoring_batch_size():
    c, r = torch.zeros(3), torch.ones(3)
    assert pairs.check_ref_logps((c, r), 3) == (c, r)
    with pytest.raises(TypeError, match="ref_logps must be two tensors"):
        pairs.check_ref_logps(c, 3)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        pairs.check_ref_logps((c, r), 4)
    with pytest.raises(ValueError, match="ref_logps"):
        pairs.check_ref_logps((c, torch.tensor([0.0, float("nan"), 0.0])), 3)
    assert pairs.scoring_batch_size(None) == 512 and pairs.scoring_batch_size(8) == 8
    with pytest.raises(ValueError, match="batch_size"):
        pairs.scoring_batch_size(0)


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

@pytest.mark.parametrize("idx, error, message", [
    ([0.5], TypeError, r"idx must be a slice or a 1-D sequence of integer positions of pairs, got a 1-D torch\.float"),
    ([100], ValueError, r"idx must hold positions in \[-8, 8\) \(the 8 pairs\), got values from 100 to 100"),
    ([], ValueError, r"idx must select at least one pair, got no positions"),
    (slice(8, 9), ValueError, r"idx must select at least one of the 8 pairs"),
    ("a", TypeError, r"idx must be a slice or integer positions of pairs, got str"),
])
def test_trim_pairs_names_a_bad_idx(tiny, idx, error, message):
    with pytest.raises(error, match=message):
        pairs.trim_pairs(tiny[2], idx)


def test_stack_pairs_pads_both_sides_to_one_width():
    batch = dict(prompt_ids=torch.tensor([[7, 8]]), prompt_mask=torch.tensor([[1, 1]]),
                 chosen_ids=torch.tensor([[1, 2, 3]]), chosen_mask=torch.tensor([[1, 1, 1]]),
                 rejected_ids=torch.tensor([[4]]), rejected_mask=torch.tensor([[1]]))
    p, pm, r, rm = pairs.stack_pairs(batch, pad_id=0)
    assert p.tolist() == [[7, 8]] and pm.tolist() == [[1, 1]]
    assert r.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert rm.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_stack_pairs_names_batch():
    with pytest.raises(ValueError, match=r"batch must be a dict with the tensors \['prompt_ids'.*got a dict with \[\]"):
        pairs.stack_pairs({}, 0)
    with pytest.raises(TypeError, match=r"batch must be a dict with the tensors .*got NoneType"):
        pairs.stack_pairs(None, 0)
