"""rlnotes.sft: what sft.train does to the caller's model, the dtypes it trains in, and the
held-out loss on bad input; and what SFT learns (on conftest.py's ``prepared_sft20``)."""

import numpy as np
import pytest
import torch

from rlnotes import lm, models, sft
from rlnotes.trainer import TrainingInterrupted

RUN = dict(steps=3, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def corpus(task):
    return task.sft_corpus(16, seed=0)


def _fresh(tok):
    return models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0)


def _flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_train_sft_hands_the_model_back_in_the_mode_it_came_in(tok, corpus, mode):
    model = _fresh(tok).train(mode != "eval")
    if mode == "mixed":
        model.lm_head.eval()
    before = _flags(model)
    out = sft.train(corpus, model=model, tokenizer=tok, **RUN)
    assert out.model is model and _flags(model) == before
    assert len(out.history) == 3


def test_train_sft_restores_the_mode_after_an_error_and_an_interrupt(tok, corpus, monkeypatch):
    model = _fresh(tok).train()
    calls = []

    def loss_then_fail(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args)

    original = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", loss_then_fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        sft.train(corpus, model=model, tokenizer=tok, **RUN)
    assert model.training
    monkeypatch.setattr(sft, "sft_loss", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt) as stop:
        sft.train(corpus, model=model, tokenizer=tok, **RUN)
    assert isinstance(stop.value, TrainingInterrupted) and model.training


def test_ctrl_c_while_encoding_the_corpus_raises_training_interrupted(tok, corpus, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm, "encode_prompts", interrupted)
    with pytest.raises(KeyboardInterrupt) as stop:
        sft.train(corpus, model=_fresh(tok), tokenizer=tok, **RUN)
    assert isinstance(stop.value, TrainingInterrupted) and "after 0 complete updates" in str(stop.value)
    assert len(stop.value.result.history) == 0 and isinstance(stop.value.result.config, sft.SFTConfig)


def test_train_sft_refuses_float16_and_a_frozen_model(tok, corpus):
    with pytest.raises(TypeError, match=r"model has torch.float16 parameters.*allowed: float32, float64 or "
                                        r"bfloat16, e.g. model.float\(\)"):
        sft.train(corpus, model=_fresh(tok).half(), tokenizer=tok, **RUN)
    with pytest.raises(ValueError, match=r"model has no trainable parameter \(requires_grad is False"):
        sft.train(corpus, model=_fresh(tok).requires_grad_(False), tokenizer=tok, **RUN)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sft.train(corpus, model="gpt2", tokenizer=tok, **RUN)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_train_sft_trains_in_the_allowed_dtypes(tok, corpus, dtype):
    model = _fresh(tok).to(dtype)
    loss = sft.train(corpus, model=model, tokenizer=tok, **RUN).history.update_array("loss")
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    assert all(p.dtype == dtype for p in model.parameters())


def test_train_sft_trains_only_what_is_trainable(tok, corpus):
    model = _fresh(tok)
    model.transformer.wte.requires_grad_(False)
    frozen = model.transformer.wte.weight.clone()
    sft.train(corpus, model=model, tokenizer=tok, **RUN)
    assert torch.equal(model.transformer.wte.weight, frozen) and not model.transformer.wte.weight.requires_grad


@pytest.mark.parametrize("prompts, responses, error, match", [
    ([], [], ValueError, "prompts must be a non-empty list of strings"),
    (["a :", "b :"], ["good ."], ValueError, "prompts and responses must be of equal length, got 2 and 1"),
])
def test_heldout_loss_refuses_empty_and_unequal_texts(tok, model, prompts, responses, error, match):
    with pytest.raises(error, match=match):
        sft.heldout_loss(model, tok, prompts, responses)


def test_heldout_loss_refuses_a_batch_size_of_zero_and_batches_change_nothing(tok, model, corpus):
    xs, ys = corpus
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        sft.heldout_loss(model, tok, xs, ys, batch_size=0)
    assert sft.heldout_loss(model, tok, xs, ys, batch_size=3) == pytest.approx(sft.heldout_loss(model, tok, xs, ys))
    assert sft.heldout_loss(model, tok, tuple(xs), tuple(ys)) == sft.heldout_loss(model, tok, xs, ys)


def test_sft_loss_refuses_a_mask_with_no_response_token(tok, model):
    p, pm = lm.encode_prompts(tok, ["a :"])
    r, rm = lm.encode_responses(tok, ["good ."])
    assert torch.isfinite(sft.sft_loss(model, p, pm, r, rm))
    with pytest.raises(ValueError, match="response_mask must mark at least one response token"):
        sft.sft_loss(model, p, pm, r, torch.zeros_like(rm))



# ------------------------------------------------------------- what SFT learns

@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


def test_sft_loss_is_mean_nll_of_response_tokens(prepared, sft20_batch):
    logp = lm.token_logprobs(prepared.sft, *sft20_batch)
    n_tokens = 5 + 3  # response tokens, EOS included
    assert sft.sft_loss(prepared.sft, *sft20_batch).item() == pytest.approx(-logp.sum().item() / n_tokens, rel=1e-5)


def test_train_sft_lowers_heldout_loss(prepared):
    h = prepared.sft_heldout
    assert h["sft"] < h["untrained"] - 1.0
    assert len(prepared.sft_history.update_array("loss")) == 20
    task, tok = prepared.task, prepared.tokenizer
    xs, ys = task.sft_corpus(16, seed=5)
    model = models.tiny_gpt2(tok, seed=1)
    before = sft.heldout_loss(model, tok, xs, ys)
    out = sft.train((xs, ys), model=model, tokenizer=tok, steps=15, batch_size=16, lr=3e-3, seed=0)
    assert out.model is model and isinstance(out.config, sft.SFTConfig)  # trained in place
    assert set(out.history.updates) == {"loss", "seconds"} and len(out.history) == 15
    assert sft.heldout_loss(model, tok, xs, ys) < before
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sft.train((xs, ys), model=model, tokenizer=tok, steps=0)
    with pytest.raises(ValueError, match="equal length"):
        sft.train((xs, ys[:-1]), model=model, tokenizer=tok, steps=1)


def test_train_takes_its_data_as_prompts_and_responses(tok, corpus):
    with pytest.raises(TypeError, match=r"data must be \(prompts, responses\), two lists of strings, got str"):
        sft.train("the corpus", model=_fresh(tok), tokenizer=tok, **RUN)
    with pytest.raises(TypeError, match=r"data must be \(prompts, responses\), .*got tuple of length 3"):
        sft.train((*corpus, corpus[0]), model=_fresh(tok), tokenizer=tok, **RUN)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'tokenizer'"):
        sft.train(corpus, model=_fresh(tok), **RUN)


# ------------------------------------------------------------------ issue 27, round two: bad input

def _losses(result):
    return result.history.update_array("loss").tolist()


def test_train_runs_inside_no_grad_inference_mode_and_float64_default(tok, corpus):
    expected = _losses(sft.train(corpus, model=_fresh(tok), tokenizer=tok, **RUN))
    with torch.no_grad():
        assert _losses(sft.train(corpus, model=_fresh(tok), tokenizer=tok, **RUN)) == expected
    with torch.inference_mode():
        assert _losses(sft.train(corpus, model=_fresh(tok), tokenizer=tok, **RUN)) == expected
    model = _fresh(tok)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert _losses(sft.train(corpus, model=model, tokenizer=tok, **RUN)) == expected
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_train_names_a_model_built_inside_inference_mode(tok, corpus):
    with torch.inference_mode():
        model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="model was built inside torch.inference_mode"):
        sft.train(corpus, model=model, tokenizer=tok, **RUN)


def test_train_refuses_a_huge_batch_size(tok, corpus):
    with pytest.raises(ValueError, match=r"batch_size must be <= 4096 \(MAX_BATCH_SIZE\), got 1000000"):
        sft.train(corpus, model=_fresh(tok), tokenizer=tok, steps=2, batch_size=10**6)
    assert len(sft.train(corpus, model=_fresh(tok), tokenizer=tok, steps=1, batch_size=sft.MAX_BATCH_SIZE).history) == 1
