"""Many seeds of one trainer, on every core: ``train_seeds`` (several settings at once: ``cost.train_side_by_side``).

A comparison between settings needs ten or more seeds to survive another CPU's rounding (one
seed's fate can turn on the last bit of a sum). The control trainers are small and run on one
thread, so the seeds of one setting run in parallel, one process per core. Each run is seeded on
its own, so the results are the same whatever the number of processes, and the same as calling
the trainer seed by seed.
"""

from __future__ import annotations

import dataclasses
import functools

from .parallel import pool_for
from .utils import check_positive_int


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list of distinct integers >= 0, at least one; ``ValueError`` naming them otherwise."""
    seeds = [check_positive_int("seeds", s, 0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
    return seeds


def _one(train, keep_models, kwargs, seed):
    result = train(seed=seed, **kwargs)   # on one thread (parallel.Pool): as fast for these networks, the same bits
    return seed, result if keep_models else dataclasses.replace(result, model=None, value_fn=None)


def train_seeds(train, seeds, *, workers=None, keep_models: bool = False, **kwargs) -> dict:
    """``{seed: train(seed=seed, **kwargs)}`` for each seed, run by up to ``workers`` processes
    (default: one per core, at most one per seed; ``workers=1`` runs in this process; a started
    ``parallel.Pool`` runs them on its processes).

    ``train`` must be importable by name (a trainer of rlnotes, such as ``rlnotes.pg.train``).
    With ``keep_models=False`` (the default) each ``TrainResult`` comes back without its networks
    (``model`` and ``value_fn`` are None): the history is what a comparison over seeds reads,
    and it is cheap to send between processes.
    """
    seeds = check_seeds(seeds)
    if "seed" in kwargs:
        raise TypeError("pass the seeds as `seeds`, not `seed`")
    with pool_for(workers, len(seeds)) as pool:
        return dict(pool.map(functools.partial(_one, train, keep_models, kwargs), seeds))

