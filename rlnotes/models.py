"""Chapters 4 to 6: the causal language models themselves, built, loaded, saved, and the precision they run in.

Public API:

- ``tiny_gpt2(tokenizer, ...)``: a ``GPT2LMHeadModel`` from a config (no download), seeded.
- ``load_causal_lm(name_or_path)`` / ``save_pretrained(model, tokenizer, path)``: the scale-up path, any
  ``transformers`` causal LM by hub id or folder (folders checked first; ``BARE_HUB_IDS``).
- ``bf16_hardware(device)`` / ``autocast(device)``: bf16 autocast on GPUs with bf16 in hardware, float32
  elsewhere (every forward pass of ``lm`` and ``sampling`` runs under it).
- ``active_dropout(model)``: whether train and eval mode differ.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from .utils import check_positive_int, check_seed, get_device

__all__ = ["tiny_gpt2", "load_causal_lm", "save_pretrained", "bf16_hardware", "autocast", "active_dropout",
           "check_tokenizer", "check_module", "BARE_HUB_IDS", "MAX_N_POSITIONS", "MAX_PARAMETERS"]

# tiny_gpt2's limits, far above the book's models (32 positions, ~0.1 M parameters) and GPT-2 small (1024
# positions, 124 M parameters): past them the weights alone would take minutes to initialise or more memory
# than a laptop has, and torch's allocator fails deep inside instead of naming the argument.
MAX_N_POSITIONS = 65536
MAX_PARAMETERS = 200_000_000


def check_tokenizer(name: str, tokenizer) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``tokenizer`` looks like a ``transformers`` tokenizer
    (callable on text, with ``decode``), e.g. ``sentiment.build_tokenizer``'s or ``load_causal_lm``'s."""
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"{name} must be a transformers tokenizer (callable on text, with decode), e.g. "
                        f"rlnotes.sentiment.build_tokenizer(task), got {type(tokenizer).__name__} {tokenizer!r:.60}")


def check_module(name: str, model) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a causal LM), got {type(model).__name__} {model!r:.60}")


def _check_size(tokenizer, n_layer: int, n_embd: int, n_positions: int) -> None:
    if n_positions > MAX_N_POSITIONS:
        raise ValueError(f"n_positions must be <= {MAX_N_POSITIONS} (MAX_N_POSITIONS), got {n_positions}")
    params = (len(tokenizer) + n_positions) * n_embd + n_layer * (12 * n_embd ** 2 + 13 * n_embd)
    if params > MAX_PARAMETERS:
        raise ValueError(f"n_layer={n_layer}, n_embd={n_embd}, n_positions={n_positions} make about {params:.3g} "
                         f"parameters, more than MAX_PARAMETERS ({MAX_PARAMETERS:.3g}; GPT-2 small has 1.24e+08): "
                         "use load_causal_lm for a larger model")


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 32,
              seed: int = 0, activation: str = "gelu_pytorch_tanh"):
    """A freshly initialised ``GPT2LMHeadModel`` sized for a laptop CPU (about 0.1 M parameters).

    The weights come from ``seed`` alone (an integer in [0, 2**63), ``utils.check_seed``) and leave
    the global RNG untouched. ``activation`` is the MLP's GELU: ``"gelu_pytorch_tanh"`` (default)
    is GPT-2's tanh approximation as one fused kernel, several times faster than ``"gelu_new"``
    (GPT-2's original, the same formula as a composition of Python-level tensor operations),
    which agrees with it to float rounding.
    Refused (``ValueError``): ``n_positions`` above ``MAX_N_POSITIONS`` (65536) and sizes of more than
    ``MAX_PARAMETERS`` (2e8) parameters in all; ``tokenizer`` must be a tokenizer (``TypeError``).
    Attention uses PyTorch's fused ``scaled_dot_product_attention`` (``"sdpa"``). Scaling up to
    GPT-2 small: ``n_layer=12, n_embd=768, n_head=12``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import ACT2CLS

    if activation not in ACT2CLS:
        raise ValueError(f"activation must be one of {sorted(ACT2CLS)}, got {activation!r}")
    check_tokenizer("tokenizer", tokenizer)
    n_layer, n_embd, n_head, n_positions = (check_positive_int(name, value) for name, value in (
        ("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head), ("n_positions", n_positions)))
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    seed = check_seed("seed", seed)
    _check_size(tokenizer, n_layer, n_embd, n_positions)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function=activation, attn_implementation="sdpa")
    from .trainer import training_scope

    # the weights from ``seed``, the caller's generator left as it was; float32 whatever default dtype the caller
    # set, and trainable parameters even when the caller is inside torch.inference_mode() (which would make them
    # inference tensors that autograd refuses)
    with training_scope(seed):
        return GPT2LMHeadModel(config)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# The hub's causal LMs named without an org (its legacy ids); every other hub model is "org/name".
BARE_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt", "ctrl",
                "xlnet-base-cased", "xlnet-large-cased")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds ``repo_id``'s config.json (a lookup on disk, no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ImportError, ValueError):
        return False


def _local_folder(name_or_path) -> Path | None:
    """The folder ``name_or_path`` names, checked, or None for a hub id (``gpt2``, ``org/model``).

    It names a folder when it is a ``Path``, exists, starts with ``.``, ``~`` or a separator,
    does not have the form of a hub id, is ``dir/name`` with ``dir`` an existing folder, or is a
    name without a ``/`` that is neither one of the hub's ``BARE_HUB_IDS`` nor in the local hub
    cache (``my_saved_model``: a folder that is not there, not a hub id).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a hub id or a folder (str or Path), got {name_or_path!r}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    local = (isinstance(name_or_path, os.PathLike) or path.exists() or text.startswith((".", "~", os.sep))
             or (os.altsep is not None and os.altsep in text) or not _HUB_ID.fullmatch(text)
             or ("/" in text and Path(text.split("/")[0]).is_dir())
             or ("/" not in text and text not in BARE_HUB_IDS and not _in_hub_cache(text)))
    if not local:
        return None
    if not path.exists():
        hub = "" if "/" in text or not _HUB_ID.fullmatch(text) else (
            "; a hub model is named 'org/name' (e.g. 'openai-community/gpt2') or is one of "
            + ", ".join(BARE_HUB_IDS))
        raise ValueError(f"name_or_path: no such folder {text!r} (resolved to {path.resolve()}){hub}")
    if not path.is_dir():
        raise ValueError(f"name_or_path: {text!r} is a file; give the folder save_pretrained wrote")
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append("tokenizer files (" + ", ".join(_TOKENIZER_FILES) + ")")
    if missing:
        raise ValueError(f"name_or_path: folder {text!r} is not a saved model and tokenizer: it has no "
                         + " and no ".join(missing) + " (save one with rlnotes.models.save_pretrained)")
    return path


def load_causal_lm(name_or_path: str | Path, device=None):
    """The scale-up path: any ``transformers`` causal LM and its tokenizer, by hub name or folder.

    A folder (a ``Path``, a string that exists or looks like a path, or a name without ``/`` that
    is neither one of the hub's ``BARE_HUB_IDS`` nor in the local hub cache) is checked first, so
    a mistyped one fails at once ("no such folder"), naming it, instead of being retried as a hub
    id. Hub ids go to ``transformers`` (set ``HF_HUB_OFFLINE=1`` to use only the local cache). Code shipped with a
    model is never run (``trust_remote_code=False``).

    A tokenizer without a pad token gets its EOS token as pad (as GPT-2 needs); masks, not pad
    ids, mark padding everywhere in rlnotes, so the two may coincide.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _local_folder(name_or_path)
    source = name_or_path if folder is None else folder
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=False).to(get_device(device))
    return model, tokenizer


def save_pretrained(model, tokenizer, path: str | Path) -> None:
    """Save a model and its tokenizer to one folder, loadable again with ``load_causal_lm``.

    ``model`` and ``tokenizer``: a ``transformers`` model and tokenizer (each with ``save_pretrained``)."""
    for name, value in (("model", model), ("tokenizer", tokenizer)):
        if not callable(getattr(value, "save_pretrained", None)):
            raise TypeError(f"{name} must be a transformers {name} (with a save_pretrained method), got "
                            f"{type(value).__name__} {value!r:.60}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder (str or Path), got {path!r}")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path {os.fspath(path)!r} is a file: save_pretrained needs a folder")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def bf16_hardware(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU with bf16 in hardware (compute capability 8.0 or newer:
    A100, H100, RTX 30xx and later). A T4 (Colab's free GPU, 7.5) answers False, although
    ``torch.cuda.is_bf16_supported()`` says True there: that counts slow software emulation."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device):
    """bf16 autocast on a CUDA GPU with bf16 hardware (``bf16_hardware``); float32 elsewhere: on the
    CPU, and on older GPUs such as a T4, where emulated bf16 would be slower than float32."""
    if bf16_hardware(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def active_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer with p > 0, i.e. whether its forward pass in train mode
    differs from the one in eval mode (and a no-grad scoring pass cannot stand in for the gradient pass).
    ``model`` must be a ``torch.nn.Module`` (TypeError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
