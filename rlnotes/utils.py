"""Small shared helpers: seeding, device selection and argument checks with clear messages."""

from __future__ import annotations

import math
import random
import reprlib

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's global generator.

    A convenience for a reader's own scripts; rlnotes' trainers never call it (they draw from
    generators of their own, ``rlnotes.trainer.rng_scope``), so they leave the caller's state alone.
    ``seed`` is a seed (``check_seed``) below 2**32, the most that ``np.random.seed`` takes.
    """
    seed = check_seed("seed", seed)
    if seed >= 2**32:
        raise ValueError(f"seed must be below 2**32 for NumPy's global generator (np.random.seed), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``device`` if given, else CUDA, then Apple's MPS, then the CPU.

    ``device`` is a ``torch.device``, a name such as ``"cpu"`` or ``"cuda:0"``, or a CUDA index;
    anything else raises ``TypeError``, a name torch does not know ``ValueError``."""
    if device is not None:
        if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
            raise TypeError(f"device must be a torch.device, a name such as 'cpu' or 'cuda:0', or a CUDA index, "
                            f"got {device!r}")
        try:
            return torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device must be a device torch knows, such as 'cpu' or 'cuda:0', got {device!r} "
                             f"({error})") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_float(name: str, value) -> float:
    flag = isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) in (torch.bool, np.bool_)
    if flag or isinstance(value, (str, bytes)):  # float(True) is 1.0 and float("0.1") is 0.1: neither is a number
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {reprlib.repr(value)}") from None
    except OverflowError:
        raise ValueError(f"{name} must be finite as a float, got {reprlib.repr(value)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is finite and > 0
    (``TypeError`` unless it is a number; a bool or a string is not one)."""
    value = _as_float(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_in_range(name: str, value, low: float, high: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless ``low <= value <= high``
    (``TypeError`` unless it is a number; a bool or a string is not one)."""
    value = _as_float(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise unless it is a whole number >= ``minimum``.

    ``64.0`` is accepted and returned as ``64``: callers must use the returned value. A bool,
    a string or a fraction raises ``TypeError``.
    """
    whole = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) or \
        (isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer())
    if not whole:  # ints are not converted to float: 2**64 stays exact and 10**400 does not overflow
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_seed(name: str, value) -> int:
    """Return the seed ``value`` as an int, or raise unless it is a whole number in [0, 2**63):
    what torch's, NumPy's and gymnasium's generators all take, with room for the offsets that
    rlnotes adds to a seed. NumPy integers and whole floats (``3.0``) are accepted; a bool, a
    string or a fraction raises ``TypeError``, a negative or too large seed ``ValueError``."""
    value = check_positive_int(name, value, 0)
    if value >= 2**63:
        raise ValueError(f"{name} must be below 2**63, got {value}")
    return value


def check_binary(name: str, tensor) -> None:
    """Raise ``ValueError`` naming ``name`` unless the tensor (a mask or ``dones``: int, float or
    bool) holds only 0 and 1, the first other value quoted."""
    ok = (tensor == 0) | (tensor == 1)
    if not bool(ok.all()):
        raise ValueError(f"{name} must hold only 0 and 1 (or False and True), "
                         f"got a value of {tensor[~ok][0].item()!r}")


def check_same_shape(**tensors) -> None:
    """Raise ``ValueError`` naming the arguments unless all given arrays (tensors, NumPy arrays or
    nested lists) share one shape."""
    shapes = {}
    for name, t in tensors.items():
        try:
            shapes[name] = tuple(np.shape(t))
        except ValueError:   # NumPy refuses ragged nested lists
            raise ValueError(f"{name} must be a rectangular array (rows of one length), got {reprlib.repr(t)}") \
                from None
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {described}")


def check_finite(name: str, tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` (a tensor, an array or a list) holds a NaN or an infinity,
    ``TypeError`` if it does not hold numbers."""
    try:
        finite = torch.isfinite(tensor).all() if torch.is_tensor(tensor) else np.isfinite(tensor).all()
    except TypeError:
        raise TypeError(f"{name} must hold numbers, got {reprlib.repr(tensor)}") from None
    if not bool(finite):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_tensor(name: str, value, kind: str = "float") -> torch.Tensor:
    """Return ``value`` if it is a torch tensor of the ``kind`` asked for, else raise ``TypeError``
    naming ``name``, what was given and what is allowed. ``kind``: "float" (a floating dtype),
    "int" (an integer dtype: token ids, actions) or "any"."""
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__} {reprlib.repr(value)}")
    ok = {"float": value.is_floating_point(), "any": True,
          "int": not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool}[kind]
    if not ok:
        allowed = {"float": "a floating dtype", "int": "an integer dtype"}[kind]
        raise TypeError(f"{name} must be a tensor of {allowed}, got dtype {value.dtype}")
    return value
