"""Jobs run side by side in worker processes: ``cores`` and ``Pool``, the one pool of rlnotes.

``seeds.train_seeds``, ``cost.train_side_by_side``, ``frontier.Workers`` and
``dpo_vs_ppo.dpo_ppo_frontier`` all run on it. A ``Pool`` of ``workers`` processes (started by
``spawn``, each on one torch thread) runs ``map(fn, jobs)`` and returns the results in the order
of ``jobs``; when a job fails, or on Ctrl-C, the jobs not yet started are cancelled and the error
is raised. An ``initializer(*initargs)`` runs once in each worker, and what it returns (the state
that every job of that worker shares, such as chapter 4's ``Prepared``) is passed to each job as
``fn(state, job)``. ``initargs`` travel once per worker, transformers models as their class, config
and weights (rebuilt on arrival). ``workers=1`` runs everything in this process, on one thread,
and leaves the thread count as it found it. Each job is seeded on its own, so the results do not
depend on the number of processes. Jobs travel as ``initargs`` do. Functions that take ``workers``
also take a started ``Pool`` (without an initializer), so that a chapter starts its processes
once for all its runs (``pool_for``).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from .utils import check_positive_int

_STATE = {}     # in a worker process: what its initializer returned


def cores() -> int:
    """The number of CPUs this process may run on (its affinity, where the system says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _rebuild(cls, config, state, training, trainable):
    model = cls(config).to(next(v.dtype for v in state.values() if v.is_floating_point()))
    model.load_state_dict(state)
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    return model.train(training)


class _Pickler(pickle.Pickler):
    """Sends a transformers model as its class, config and weights, rebuilt on arrival: the forward
    hooks that transformers installs on a model at its first pass are local functions, which
    pickle cannot send."""

    def reducer_override(self, obj):
        from transformers import PreTrainedModel

        if isinstance(obj, PreTrainedModel):
            state = {k: v.detach().clone() for k, v in obj.state_dict().items()}
            trainable = {n for n, p in obj.named_parameters() if p.requires_grad}
            return _rebuild, (type(obj), obj.config, state, obj.training, trainable)
        return NotImplemented


def _start_worker(payload: bytes | None):
    torch.set_num_threads(1)    # one thread per job: as fast for these models, and the same bits
    if payload is not None:
        initializer, initargs = pickle.loads(payload)
        _STATE["state"] = initializer(*initargs)


def _call(fn, job, with_state: bool):
    return fn(_STATE["state"], job) if with_state else fn(job)


def _dumps(obj) -> bytes:
    """``obj`` pickled as ``_Pickler`` does: transformers models as class, config and weights."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


def _call_pickled(payload: bytes, with_state: bool):
    fn, job = pickle.loads(payload)
    return _call(fn, job, with_state)


class Pool:
    """``workers`` processes (default: one per core, ``cores()``; 1: this process) that run
    ``map(fn, jobs)``: ``[fn(job) for job in jobs]``, or ``[fn(state, job) ...]`` with an
    ``initializer``, whose ``initializer(*initargs)`` is the state, made once per process.
    Use as ``with Pool(n) as pool: pool.map(...)``, or call ``close()``; ``map`` may be called
    several times. ``fn`` must be importable by name (a module's function, or a
    ``functools.partial`` of one)."""

    def __init__(self, workers: int | None = None, *, initializer=None, initargs: tuple = ()):
        self.workers = cores() if workers is None else check_positive_int("workers", workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable (or None), got {type(initializer).__name__}")
        if not isinstance(initargs, (tuple, list)):
            raise TypeError(f"initargs must be a tuple of the initializer's arguments, got {type(initargs).__name__}")
        self.initializer, self.initargs = initializer, tuple(initargs)
        self._executor = None
        self._here = {}                 # workers=1: the initializer's state, kept by this pool only
        self._closed = False
        if self.workers > 1:
            payload = None if initializer is None else _dumps((initializer, self.initargs))
            self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                 initializer=_start_worker, initargs=(payload,))

    def map(self, fn, jobs) -> list:
        """The results of ``fn`` on each of ``jobs``, in order. A failed job (or Ctrl-C) cancels
        the jobs that have not started and raises."""
        if self._closed:
            raise RuntimeError("this pool is closed")
        self._check_fn(fn)
        if isinstance(jobs, (str, bytes)) or not hasattr(jobs, "__iter__"):
            raise TypeError(f"jobs must be an iterable of jobs (a list), got {type(jobs).__name__}")
        jobs, with_state = list(jobs), self.initializer is not None
        if self._executor is None:
            return self._map_here(fn, jobs, with_state)
        # each job goes as _Pickler sends it: a model in a job (a Prepared, say) arrives rebuilt, hooks and all
        futures = [self._executor.submit(_call_pickled, _dumps((fn, job)), with_state) for job in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _check_fn(self, fn):
        """``TypeError`` naming ``fn`` unless it is callable and, with worker processes, importable by name."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if self._executor is not None:
            try:
                pickle.dumps(fn)
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                raise TypeError(f"fn must be importable by name to reach a worker process (a module's function or "
                                f"a functools.partial of one; not a lambda or a local function), got {fn!r:.80} "
                                f"({error})") from None

    def _map_here(self, fn, jobs, with_state):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if with_state and "state" not in self._here:
                self._here["state"] = self.initializer(*self.initargs)
            return [fn(self._here["state"], job) if with_state else fn(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)

    def close(self):
        """Stop the worker processes (the jobs not started are cancelled); the pool cannot be used after."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        self._here.clear()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def pool_for(workers, n_jobs: int):
    """The pool to run ``n_jobs`` jobs on: ``workers`` itself if it is a started ``Pool`` (left open for
    the caller), else a new one of ``min(n_jobs, workers)`` processes (None: one per core), closed after."""
    if isinstance(workers, Pool):
        if workers.initializer is not None:
            raise ValueError("workers must be a Pool without an initializer (its jobs carry what they need)")
        yield workers
        return
    n = cores() if workers is None else check_positive_int("workers", workers)
    with Pool(max(1, min(n_jobs, n))) as pool:
        yield pool
