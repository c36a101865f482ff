"""rlnotes.pairs: the preference tensors checked and trimmed, their log-probabilities in one pass
(``pair_logps``) and the reference's over a data set (``reference_logps``)."""

import pytest
import torch

from rlnotes import dpo, lm, pairs


def _flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def _fresh(tok, seed=3):
    return lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=seed)


# ----- the trainer on a tiny causal LM -------------------------------------------------------


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
    model = _fresh(tok, seed=0).train()
    model.transformer.h[0].eval()
    before = _flags(model)
    pairs.reference_logps(model, data)
    assert _flags(model) == before
    dpo.preference_metrics(model, model, data, beta=0.1)
    assert _flags(model) == before
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module"):
        pairs.reference_logps(None, data)


def test_pair_logps_names_a_bad_batch(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match=r"batch must be a dict with the tensors .* missing \['rejected_mask'\]"):
        pairs.pair_logps(model, {k: v for k, v in data.items() if k != "rejected_mask"})
