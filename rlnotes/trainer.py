"""The contract every trainer follows: what it takes, what it logs, what it returns.

Every ``train*`` function of rlnotes

1. takes its hyperparameters as keyword arguments that fill ONE frozen configuration dataclass
   (``PGConfig``, ``PPOConfig``, ``DPOConfig``, ...). The dataclass checks and converts every
   value once, in ``__post_init__``; the trainer and the functions it calls then use the
   converted values and trust them;
2. takes a ``seed`` and draws all its randomness from generators made from it: its own
   ``torch.Generator`` objects where torch lets one be passed, and, for the calls that only use
   torch's global generator (``Categorical.sample``, weight initialisation inside
   ``transformers``), a private fork of that generator (``rng_scope``) that is restored on exit.
   The caller's random state is never changed, and the same seed gives the same numbers;
3. records what happened in a ``History`` (one value per update and metric; finished episodes
   for the control trainers), under the log keys of the table in CONTRIBUTING.md;
4. returns a ``TrainResult``: the trained ``model`` (and ``value_fn`` where the method learns
   one), the ``history`` and the ``config`` the run used;
5. applies each update whole (``atomic``): an interrupt (Ctrl-C) waits for the update under way
   to finish; then the trainer closes its environments and raises ``TrainingInterrupted`` (a
   ``KeyboardInterrupt``) whose ``result`` holds everything trained and recorded so far;
6. shows a progress bar (tqdm's notebook-aware ``tqdm.auto``) only when asked,
   ``progress=True``: the default keeps the built book and nbval's outputs deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .utils import check_in_range, check_positive_int, check_seed


# ----------------------------------------------------------------------------------- History

@dataclass
class History:
    """What a training run recorded.

    ``updates`` maps a log key (``"kl/exact_per_state"``, ``"entropy"``, ``"seconds"``, ...) to
    one value per update; ``evals`` maps the keys logged at evaluations only (``"eval/step"``,
    ``"eval/<metric>"``) to one value per evaluation; ``update_array(key)`` returns either as a
    NumPy array. The control
    trainers also record each finished episode: ``episode_ends`` (the environment step count at
    which it ended) and ``episode_returns`` (its undiscounted return).
    """

    _ends: list = field(default_factory=list)
    _returns: list = field(default_factory=list)
    updates: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)

    @property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self._ends, dtype=np.int64)

    @property
    def episode_returns(self) -> np.ndarray:
        return np.asarray(self._returns, dtype=float)

    def add_episode(self, env_step: int, episode_return: float) -> None:
        self._ends.append(int(env_step))
        self._returns.append(float(episode_return))

    def log(self, metrics: dict | None = None, **more) -> None:
        """Append one value per metric for the current update (tensors are converted to floats).

        Keys with a slash (``"kl/exact_per_state"``) come in the dict, plain ones as keywords. A value
        that is not one number (a string, a tensor of several elements) is refused (``TypeError``).
        """
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict of metric name -> number (or None), got {type(metrics).__name__}")
        for name, value in {**(metrics or {}), **more}.items():
            try:
                value = value.item() if torch.is_tensor(value) else float(value)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"metric {name!r} must be one number, got {value!r}") from None
            (self.evals if name.startswith("eval/") else self.updates).setdefault(name, []).append(value)

    def update_array(self, key: str) -> np.ndarray:
        """The values logged under ``key``, one per update; ``KeyError`` naming the keys logged."""
        logged = {**self.updates, **self.evals}
        if key not in logged:
            raise KeyError(f"no metric {key!r} was logged; logged: {sorted(logged)}")
        return np.asarray(logged[key], dtype=float)

    def __len__(self) -> int:
        """The number of updates logged."""
        return max((len(v) for v in self.updates.values()), default=0)

    def moving_mean(self, window: int = 20) -> np.ndarray:
        """Mean return of the last ``window`` finished episodes, after each episode.

        ``window`` must be a positive integer, here and in the methods below (``ValueError`` or
        ``TypeError`` naming it otherwise; a bool is refused).
        """
        window = check_positive_int("window", window)
        r = self.episode_returns
        c = np.concatenate([[0.0], np.cumsum(r)])
        idx = np.arange(1, len(r) + 1)
        lo = np.maximum(idx - window, 0)
        return (c[idx] - c[lo]) / (idx - lo)

    def final_mean_return(self, window: int = 20) -> float:
        """Mean return of the last ``window`` finished episodes (nan if none finished)."""
        r = self.episode_returns[-check_positive_int("window", window):]
        return float(r.mean()) if len(r) else float("nan")

    def steps_to_reach(self, threshold: float, window: int = 20) -> float:
        """First env step at which the mean of the last ``window`` returns is >= threshold (inf if never).

        ``threshold`` must be a finite number (``ValueError`` otherwise)."""
        threshold = check_in_range("threshold", threshold, -np.inf, np.inf)
        window = check_positive_int("window", window)
        m = self.moving_mean(window)
        full = np.arange(len(m)) >= window - 1
        hit = np.nonzero((m >= threshold) & full)[0]
        return float(self.episode_ends[hit[0]]) if len(hit) else float("inf")

    def curve(self, grid: np.ndarray, window: int = 20) -> np.ndarray:
        """The moving mean return as a function of env steps, sampled on ``grid`` (nan before any episode).

        ``grid`` must hold finite numbers (``ValueError`` otherwise)."""
        m = self.moving_mean(window)
        if not np.isfinite(np.asarray(grid, dtype=float)).all():
            raise ValueError("grid must hold finite numbers of env steps (it holds NaN or inf)")
        idx = np.searchsorted(self.episode_ends, grid, side="right") - 1
        return np.where(idx >= 0, m[np.clip(idx, 0, None)] if len(m) else np.nan, np.nan)


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start


# -------------------------------------------------------------------------------- the result

@dataclass(frozen=True)
class TrainResult:
    """What every trainer returns.

    ``model``: the trained model (a policy network, a causal LM, or a reward model);
    ``history``: what was logged; ``config``: the frozen configuration the run used;
    ``value_fn``: the learned value function, for the methods that learn one (else None).
    """

    model: Any
    history: History
    config: Any
    value_fn: Any = None

    @property
    def policy(self):
        """The trained policy: another name for ``model``, for the policy trainers."""
        return self.model


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by a trainer interrupted between or inside updates; ``result`` is a ``TrainResult``
    holding the models as they were after the last complete update and the history so far::

        try:
            out = ppo.train(total_steps=10**6, seed=0)
        except KeyboardInterrupt as stop:
            out = stop.result
    """

    def __init__(self, result, cause: BaseException, detail: str | None = None):
        """``result``: any partial result (a ``TrainResult``, a partial ``Prepared``, ...); ``detail``
        replaces the default description of how far training got."""
        history = getattr(result, "history", None)
        done = detail or (f"after {len(history)} complete updates" if history is not None else "early")
        super().__init__(f"training stopped {done} ({type(cause).__name__}); the partial result is in .result")
        self.result = result


# --------------------------------------------------------------------------------- the policy

def trainable_copy(ref) -> nn.Module:
    """A trainable copy of the frozen reference model pi_ref, the starting point of the LM trainers:
    ``copy.deepcopy(ref)`` with every parameter ``requires_grad`` and in train mode (``ref`` itself is
    untouched). ``ref`` must be a ``torch.nn.Module`` (TypeError)."""
    if not isinstance(ref, nn.Module):
        raise TypeError(f"ref must be a torch.nn.Module (the reference model), got {type(ref).__name__}")
    return copy.deepcopy(ref).requires_grad_(True).train()


# ------------------------------------------------------------------------------ configuration

class Config:
    """Base of the trainers' frozen configurations. ``__post_init__`` of each subclass calls
    ``check(name, checker, *args)`` for every field: the checker (from ``rlnotes.utils``) raises
    an error that names the field and its allowed range, or returns the converted value, which
    is stored (so ``total_steps=64.0`` runs as ``64``)."""

    def check(self, name: str, checker, *args) -> None:
        value = getattr(self, name)
        if value is None and "None" in str(self.__dataclass_fields__[name].type):
            return  # a field typed ``X | None``: None means "off" (no clipping, no target, ...)
        object.__setattr__(self, name, checker(name, value, *args))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


MAX_STEPS = 100_000
"""The most ``steps`` (updates) a trainer's config takes: the book runs at most a few thousand."""
MAX_EPOCHS = 1000
"""The most ``epochs`` (passes over one set of data) a trainer's config takes: the book runs at most tens."""


def check_count(name: str, value, limit: int, limit_name: str) -> int:
    """Return ``value`` as an int >= 1, or raise (``utils.check_positive_int``'s errors, or
    ``ValueError`` naming ``name``, the value and the cap ``limit_name`` if it is above ``limit``)."""
    value = check_positive_int(name, value)
    if value > limit:
        raise ValueError(f"{name} must be <= {limit_name} ({limit}), got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a bool, or raise ``TypeError`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def make_config(cls, config=None, **overrides):
    """``cls(**overrides)``, or ``config`` with ``overrides`` replaced; unknown names raise TypeError."""
    if config is None:
        return cls(**overrides)
    if type(config) is not cls:
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides)


# ------------------------------------------------------------------------- randomness, safety

@contextlib.contextmanager
def rng_scope(seed: int):
    """Run a block on a private copy of torch's global generator, seeded with ``seed``.

    Torch's sampling calls without a ``generator`` argument (``Categorical.sample``, weight
    initialisation) draw from the global generator; inside this block they draw from a fork of
    it seeded with ``seed``, and the caller's generator state (CPU and CUDA) is restored on exit.
    """
    check_seed("seed", seed)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def training_scope(seed: int):
    """The frame every trainer runs in: ``rng_scope(seed)``, with gradients on and float32 as the
    default dtype. A caller's ``torch.no_grad()`` or ``torch.inference_mode()`` does not reach
    inside (a trainer needs gradients), and the package's networks are built in float32 whatever
    ``torch.get_default_dtype()`` the caller set; both are as the caller had them on exit."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.inference_mode(False), torch.enable_grad(), rng_scope(seed):
            yield
    finally:
        torch.set_default_dtype(dtype)


@contextlib.contextmanager
def atomic():
    """Apply one update whole: a Ctrl-C (SIGINT) that arrives inside the block is held until the
    block has finished, then delivered. An update is never left half-applied by an interrupt,
    and nothing is copied to make it so. (In a thread other than the main one, where Python
    delivers no signals, the block runs as it is.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    if previous is None:  # a handler installed outside Python: Python's own stands in for it
        previous = signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, held[0])
    elif held and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


@contextlib.contextmanager
def run_guard(partial_result, *closers):
    """The outer frame of a trainer: closes ``closers`` (environments) however it ends, and turns
    an interrupt into ``TrainingInterrupted`` carrying ``partial_result()``."""
    try:
        yield
    except KeyboardInterrupt as stop:
        if isinstance(stop, TrainingInterrupted):
            raise
        raise TrainingInterrupted(partial_result(), stop) from stop
    finally:
        for close in closers:
            close()


def progress(iterable, enabled: bool, total: int | None = None, desc: str | None = None):
    """``iterable`` wrapped in tqdm's notebook-aware bar when ``enabled``, else returned as it is."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


# ----------------------------------------------------------- what a trainer does to the caller's models

TRAIN_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

def check_model(name: str, model, trained: bool = False) -> None:
    """Raise ``TypeError`` unless ``model`` is a ``torch.nn.Module``; with ``trained``, also unless
    its floating-point parameters are float32, float64 or bfloat16 (``TRAIN_DTYPES``).

    float16 is refused on every device: the trainers keep no float32 master weights and scale no
    loss, and AdamW's eps (1e-8) is 0 in float16, so a parameter whose gradient is 0 becomes
    0 / 0 = NaN at the first step. Also with ``trained``, ``ValueError`` for parameters made inside
    ``torch.inference_mode()`` (inference tensors, which autograd cannot train). A model that is only run
    (a frozen reference) may be in any dtype.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a causal LM), got {type(model).__name__}")
    if trained and any(p.is_inference() for p in model.parameters()):
        raise ValueError(f"{name} was built inside torch.inference_mode(): its parameters are inference tensors, "
                         f"which autograd cannot train; build it outside inference_mode")
    if trained:
        bad = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()}
                     - {str(d) for d in TRAIN_DTYPES})
        if bad:
            raise TypeError(f"{name} has {', '.join(bad)} parameters, a dtype the trainers cannot train in "
                            f"(no loss scaling: AdamW turns float16 weights into NaN); allowed: float32, "
                            f"float64 or bfloat16, e.g. {name}.float()")


def check_trainable(name: str, model) -> list:
    """The parameters of ``model`` that a trainer trains: those the caller left with
    ``requires_grad=True``. Raises as ``check_model(name, model, trained=True)`` does, and
    ``ValueError`` if no parameter requires a gradient (a frozen model has nothing to train)."""
    check_model(name, model, trained=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name} has no trainable parameter (requires_grad is False for all of them): "
                         f"unfreeze what should be trained, e.g. {name}.requires_grad_(True)")
    return params


@contextlib.contextmanager
def kept_as_found(*models):
    """Run a block, then put back, however it ends (an error, an interrupt), what a trainer changes
    on the caller's models besides their weights: each parameter's ``requires_grad`` and each
    module's train/eval mode."""
    saved = [([(p, p.requires_grad) for p in m.parameters()], [(mod, mod.training) for mod in m.modules()])
             for m in models]
    try:
        yield
    finally:
        for params, modules in saved:
            for p, flag in params:
                p.requires_grad_(flag)
            for mod, flag in modules:
                mod.training = flag
