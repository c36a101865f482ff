"""Small shared helpers: seeding, device selection and argument checks with clear messages."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's global generator.

    A convenience for a reader's own scripts; rlnotes' trainers never call it (they draw from
    generators of their own, ``rlnotes.trainer.rng_scope``), so they leave the caller's state alone.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``device`` if given, else CUDA, then Apple's MPS, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_float(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    value = _as_float(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_in_range(name: str, value, low: float, high: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless ``low <= value <= high``."""
    value = _as_float(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise unless it is a whole number >= ``minimum``.

    ``64.0`` is accepted and returned as ``64``: callers must use the returned value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not float(value).is_integer():
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_same_shape(**tensors) -> None:
    """Raise ``ValueError`` naming the arguments unless all given arrays share one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {described}")


def check_finite(name: str, tensor) -> None:
    """Raise ``ValueError`` if ``tensor`` holds a NaN or an infinity."""
    finite = torch.isfinite(tensor).all() if torch.is_tensor(tensor) else np.isfinite(tensor).all()
    if not bool(finite):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")
