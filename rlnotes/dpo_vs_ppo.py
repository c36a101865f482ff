"""Chapter 5's reward-KL frontier over seeds: DPO against RLHF-PPO at one beta (section 5.7).

``dpo_ppo_point`` trains one method of ``DPO_PPO_METHODS`` (DPO on chapter 5's preference pairs,
RLHF-PPO on the learned reward r_phi) and measures it on held-out prompts (``FRONTIER_KEYS``,
optionally at DPO checkpoints); ``dpo_ppo_frontier`` runs many such points over the cores
(``parallel.Pool``: one torch thread per run, so the numbers do not depend on the number of
processes). Chapter 6's frontier, every method of the book, is ``rlnotes.frontier``.
"""

from __future__ import annotations

import numpy as np

from . import dpo, measure, rlhf
from .pairs import check_pairs, reference_logps
from .parallel import Pool, cores
from .trainer import make_config
from .utils import check_positive_int

DPO_PPO_METHODS = ("DPO", "PPO")
FRONTIER_KEYS = ("r_star", "r_star/se", "r_phi", "r_phi/se", "kl/exact_per_sequence", "kl/exact_per_sequence/se", "n")


def dpo_ppo_point(prepared, data: dict, method: str, beta: float, seed: int = 0, *, checkpoints=(),
                   eval_data: dict | None = None, n_repeats: int = 2, ref_logps: tuple | None = None,
                   **kwargs) -> dict:
    """One point of the reward-KL frontier (DPO paper, Figure 2): train ``method`` with the KL coefficient
    ``beta`` of the objective Eq. 3, then measure its samples on held-out prompts.

    "DPO": ``dpo.train(data, ref=prepared.sft, beta=beta, seed=seed, **kwargs)``; "PPO":
    ``rlhf.train(prepared, beta=beta, seed=seed, **kwargs)``. The policy is measured by
    ``measure.evaluate(..., n_repeats=n_repeats)`` (``FRONTIER_KEYS``: r*, r_phi and KL, each with its
    standard error, and n); for DPO with ``eval_data`` also the implicit reward's ``accuracy`` on those
    pairs. ``checkpoints``: DPO optimiser steps after which the policy is measured as well (a run of
    e epochs passes through the run of fewer epochs: same seed, same order, the same weights).
    Returns {"eval": ..., "checkpoints": {step: ...}, "history": History, "config": ...}; the model is
    not kept.
    """
    if method not in DPO_PPO_METHODS:
        raise ValueError(f"method must be one of {DPO_PPO_METHODS}, got {method!r}")
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    checkpoints = sorted({check_positive_int("checkpoints", c) for c in checkpoints})
    if checkpoints and method != "DPO":
        raise ValueError("checkpoints are optimiser steps of DPO; PPO is measured at the end only")

    def measured(policy):
        m = measure.evaluate(policy, prepared, n_repeats=n_repeats)
        out = {k: m[k] for k in FRONTIER_KEYS}
        if method == "DPO" and eval_data is not None:
            out["accuracy"] = dpo.preference_metrics(policy, prepared.sft, eval_data, beta)["accuracy"]
        return out

    seen = {}
    if method == "PPO":
        run = rlhf.train(prepared, beta=beta, seed=seed, **kwargs)
    else:
        cfg = make_config(dpo.DPOConfig, None, beta=beta, seed=seed, **kwargs)
        total = cfg.epochs * -(-check_pairs(data) // cfg.batch_size)
        if checkpoints and checkpoints[-1] > total:
            raise ValueError(f"checkpoints must be optimiser steps of the run (1 to {total}), got {checkpoints}")
        every = int(np.gcd.reduce(checkpoints)) if checkpoints else None
        calls = []

        def at_checkpoint(policy):          # train calls it at steps 0, every, 2 every, ... and at the end
            step = min(every * len(calls), total)
            calls.append(step)
            if step in checkpoints:
                seen[step] = measured(policy)
            return {}

        run = dpo.train(data, cfg, ref=prepared.sft, ref_logps=ref_logps,
                    callback=at_checkpoint if checkpoints else None, eval_every=every)
    return {"eval": measured(run.model), "checkpoints": seen, "history": run.history, "config": run.config}


def _start_worker(prepared, data, eval_data) -> dict:
    return {"prepared": prepared, "data": data, "eval_data": eval_data,
            "ref_logps": reference_logps(prepared.sft, data)}


def _job(w: dict, point: dict) -> dict:
    ref = {"ref_logps": w["ref_logps"]} if point.get("method") == "DPO" else {}
    return dpo_ppo_point(w["prepared"], w["data"], eval_data=w["eval_data"], **ref, **point)


def dpo_ppo_frontier(prepared, data: dict, points, *, eval_data: dict | None = None,
                     workers: int | None = None) -> list:
    """``dpo_ppo_point(prepared, data, eval_data=eval_data, **p)`` for each dict ``p`` of ``points``
    (``method``, ``beta``, ``seed`` and the rest of its arguments), in the order given.

    The points run in up to ``workers`` processes (default: one per core; 1: in this process), each
    with one torch thread, so that the results are the same whatever the number of processes. Each
    process receives ``prepared`` and the pairs once, and computes the reference's log-probabilities
    of the pairs once for all its DPO runs.
    """
    check_pairs(data)
    if eval_data is not None:
        check_pairs(eval_data, "eval_data")
    if isinstance(points, (str, bytes, dict)) or not hasattr(points, "__iter__"):
        raise TypeError(f"points must be a list of dicts (method, beta, ...), got {type(points).__name__}")
    points = list(points)
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise TypeError(f"points[{i}] must be a dict (method, beta, ...), got {type(p).__name__} {p!r:.40}")
    points = [dict(p) for p in points]
    for p in points:
        if not {"method", "beta"} <= set(p):
            raise ValueError(f"each point needs a method and a beta, got {p}")
    workers = min(len(points), cores() if workers is None else check_positive_int("workers", workers))
    with Pool(max(workers, 1), initializer=_start_worker, initargs=(prepared, data, eval_data)) as pool:
        return pool.map(_job, points)
