"""rlnotes.models: the tiny GPT-2 (seeded, its activation and attention), bf16 autocast, saving and loading
(folders checked, no remote code)."""

import contextlib

import pytest
import torch

from rlnotes import lm, models


def test_tiny_gpt2(tok, model):
    assert model.config.vocab_size == len(tok) and model.config.n_layer == 2
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000


def test_tiny_gpt2_seeds_only_its_own_weights(tok):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    torch.manual_seed(7)  # the former behaviour: reseed the global RNG, then build
    before = GPT2LMHeadModel(model.config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    other = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, seed=8)
    assert not torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)


def test_tiny_gpt2_activation_and_attention(tok):
    fused = models.tiny_gpt2(tok, seed=0).eval()
    python = models.tiny_gpt2(tok, seed=0, activation="gelu_new").eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    assert fused.config._attn_implementation == "sdpa"
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), python.state_dict().values()))
    p, pm = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r, rm = lm.encode_responses(tok, ["it was good .", "good ."])
    a, b = lm.token_logprobs(fused, p, pm, r, rm), lm.token_logprobs(python, p, pm, r, rm)
    assert torch.allclose(a, b, atol=1e-5)  # the same formula: equal to float rounding
    with pytest.raises(ValueError, match="activation must be one of"):
        models.tiny_gpt2(tok, activation="gelu_fancy")
    with pytest.raises(ValueError, match="multiple of n_head"):
        models.tiny_gpt2(tok, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be >= 1"):
        models.tiny_gpt2(tok, n_layer=0)


def test_seeds_are_checked_by_name(task, tok):
    import numpy as np

    for call in (lambda s: models.tiny_gpt2(tok, n_layer=1, n_embd=8, n_head=2, seed=s),
                 lambda s: task.prompts(3, s), lambda s: task.sft_corpus(3, s)):
        with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
            call(-1)
        with pytest.raises(TypeError, match="seed must be an integer, got '0'"):
            call("0")
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*63, got 18446744073709551616"):
        models.tiny_gpt2(tok, n_layer=1, n_embd=8, n_head=2, seed=2**64)
    # the trainers draw prompts with seed * 100_003 + step, which may pass 2**63
    assert task.prompts(3, 2**64) == task.prompts(3, 2**64) and len(task.sft_corpus(2, 2**70)[1]) == 2
    small = dict(n_layer=1, n_embd=8, n_head=2)
    a, b = models.tiny_gpt2(tok, seed=3, **small), models.tiny_gpt2(tok, seed=np.int64(3), **small)  # a NumPy integer
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert task.prompts(3, np.int64(5)) == task.prompts(3, 5) and len(task.prompts(3, 2**63 - 1)) == 3


def test_bf16_autocast_only_on_gpus_with_bf16_hardware(monkeypatch):
    # A T4 (compute capability 7.5) emulates bf16: it gets float32, even though
    # torch.cuda.is_bf16_supported() answers True there; an A100 (8.0) gets bf16 autocast.
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not models.bf16_hardware(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert models.bf16_hardware(cuda)
    assert not models.bf16_hardware(torch.device("cpu"))
    assert isinstance(models.autocast(torch.device("cpu")), contextlib.nullcontext)  # float32 on the CPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert isinstance(models.autocast(cuda), contextlib.nullcontext)  # and on a T4


def test_active_dropout(tok, model):
    assert not models.active_dropout(model)  # tiny_gpt2 sets every dropout to 0: train mode = eval mode
    assert models.active_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not models.active_dropout(torch.nn.Sequential(torch.nn.Dropout(0.0)))


def test_save_load_round_trip(tmp_path, tok, model):
    models.save_pretrained(model, tok, tmp_path)
    model2, tok2 = models.load_causal_lm(tmp_path, device="cpu")
    p, pm = lm.encode_prompts(tok2, ["review of the movie :"])
    r, rm = lm.encode_responses(tok2, ["it was good ."])
    assert torch.equal(p, lm.encode_prompts(tok, ["review of the movie :"])[0])
    assert torch.allclose(lm.token_logprobs(model2.eval(), p, pm, r, rm), lm.token_logprobs(model, p, pm, r, rm))
    assert tok2.pad_token_id == tok.pad_token_id and tok2.eos_token_id == tok.eos_token_id


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
        models.load_causal_lm("my_saved_model")
    assert calls == []  # the hub was never asked
    # the neighbours: the hub's names without an org, 'org/name' ids and names in the hub cache go to the hub
    snapshot = tmp_path / "hub" / "models--my_cached_model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--my_cached_model" / "refs").mkdir()
    (tmp_path / "hub" / "models--my_cached_model" / "refs" / "main").write_text("abc")
    for name in ("gpt2", "openai-community/gpt2", "my_cached_model"):
        with pytest.raises(OSError, match="offline"):
            models.load_causal_lm(name)
    assert calls == ["gpt2", "openai-community/gpt2", "my_cached_model"]
    monkeypatch.undo()
    models.save_pretrained(model, tok, tmp_path / "my_saved_model")  # once saved there, the same name loads it
    monkeypatch.chdir(tmp_path)
    assert models.load_causal_lm("my_saved_model", device="cpu")[1].pad_token_id == tok.pad_token_id


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
    models.save_pretrained(model, tok, tmp_path / "sft")
    for source in (tmp_path / "sft", str(tmp_path / "sft")):
        model2, tok2 = models.load_causal_lm(source, device="cpu")
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
        models.load_causal_lm("./sftt")
    with pytest.raises(ValueError, match="no such folder '.*nope'"):
        models.load_causal_lm(tmp_path / "nope")
    with pytest.raises(ValueError, match="no such folder 'checkpoints/sft'"):  # its parent folder exists
        models.load_causal_lm("checkpoints/sft")
    with pytest.raises(ValueError, match="'empty' is not a saved model and tokenizer: it has no config.json"):
        models.load_causal_lm("empty")
    with pytest.raises(ValueError, match="'afile' is a file"):
        models.load_causal_lm("afile")
    with pytest.raises(TypeError, match="name_or_path must be a hub id or a folder"):
        models.load_causal_lm(None)
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
            models.load_causal_lm(name)
    assert calls == [("gpt2", {"trust_remote_code": False}),
                     ("openai-community/gpt2", {"trust_remote_code": False})]


def test_save_onto_a_file_is_an_error(tmp_path, tok, model):
    target = tmp_path / "model.bin"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="model.bin' is a file"):
        models.save_pretrained(model, tok, target)
    assert target.read_text() == "not a folder"


# ------------------------------------------------------------------ issue 27, round two: bad input

def test_tiny_gpt2_names_a_tokenizer_that_is_not_one():
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got NoneType None"):
        models.tiny_gpt2(None)
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got str 'gpt2'"):
        models.tiny_gpt2("gpt2")


def test_tiny_gpt2_refuses_huge_sizes(tok):
    with pytest.raises(ValueError, match=r"n_positions must be <= 65536 \(MAX_N_POSITIONS\), got 1000000000"):
        models.tiny_gpt2(tok, n_positions=10**9)
    with pytest.raises(ValueError, match=r"n_layer=1000000, n_embd=64, .* more than MAX_PARAMETERS"):
        models.tiny_gpt2(tok, n_layer=10**6)
    assert models.MAX_N_POSITIONS == 65536 and models.MAX_PARAMETERS == 200_000_000


def test_tiny_gpt2_inside_inference_mode_is_trainable(tok):
    with torch.inference_mode():
        model = models.tiny_gpt2(tok, seed=0)
    assert not any(p.is_inference() for p in model.parameters())
    assert torch.equal(model.transformer.wte.weight, models.tiny_gpt2(tok, seed=0).transformer.wte.weight)


def test_save_pretrained_names_a_model_or_tokenizer_that_is_not_one(tok, model, tmp_path):
    with pytest.raises(TypeError, match="model must be a transformers model .* got NoneType None"):
        models.save_pretrained(None, tok, tmp_path / "a")
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer .* got NoneType None"):
        models.save_pretrained(model, None, tmp_path / "b")
    assert not (tmp_path / "a").exists()


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_tiny_gpt2_is_float32_and_the_same_under_a_float64_default_dtype(tok):
    expected = models.tiny_gpt2(tok, seed=0)
    torch.set_default_dtype(torch.float64)
    try:
        got = models.tiny_gpt2(tok, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    assert all(torch.equal(a, b) and b.dtype == torch.float32 for a, b in zip(expected.parameters(), got.parameters()))


def test_active_dropout_names_model():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got NoneType"):
        models.active_dropout(None)
