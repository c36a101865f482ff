"""Chapter 6: one reward-KL frontier for every method of the book (DPO paper, Figure 2, left).

``sweep`` trains each method at each beta and seed from chapter 4's pi_ref, and measures mean r*
and KL(pi || pi_ref) on held-out prompts (``rlnotes.measure.evaluate``), each with its standard
error over the samples. The online methods (PPO-RLHF, RLOO, GRPO) optimise the verifiable reward
r* itself; the offline ones (DPO, IPO) learn from chapter 5's preference pairs, which were
labelled by Bradley-Terry on r*. ``train_runs`` is the engine under ``sweep``: any list of runs,
spread over the CPU's cores (``Workers``: one process per core, started once for several calls;
one torch thread per run, so the numbers are the same whatever the number of processes),
optionally evaluated after every epoch (DPO, IPO; ``per_epoch`` and ``epoch_rows`` read them).
``summarize`` gives the mean over seeds with its standard error and the spread (sample std and
min-max), ``format_table`` prints it (``rlnotes.plots.method_frontier`` draws it); ``budget`` counts what each run spends
(samples, Adam steps), and ``gap_to_curve`` measures how far one method's points lie below
another's frontier. Chapter 5's frontier, DPO against RLHF-PPO, is ``rlnotes.dpo_vs_ppo``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from . import dpo, grpo, measure, prepare, rlhf, rloo
from .parallel import Pool, cores
from .reward import VerifiableReward
from .stats import standard_error
from .utils import check_positive_int

METHODS = ("PPO", "DPO", "IPO", "RLOO", "GRPO")


def with_true_reward(prepared):
    """``prepared`` with the verifiable reward r* (``reward.VerifiableReward``) in place of r_phi."""
    prepared = prepare.check_prepared("prepared", prepared)
    return dataclasses.replace(prepared, reward_model=VerifiableReward(prepared.task, prepared.tokenizer))


def method_call(method: str, prepared, data: dict | None = None) -> tuple:
    """How ``method`` (one of ``METHODS``) is trained: ``(trainer, its data, its named extras, the
    settings the method fixes)``, every trainer called as ``trainer(data, **extras, **settings)``.

    PPO is chapter 4's ``rlhf.train`` on r* (no unfinished-text penalty: r* has its own); DPO is
    chapter 5's ``dpo.train`` on ``data`` (``prepared.train_prefs`` encoded if None) from pi_ref, IPO
    the same with ``loss_type="ipo"``; RLOO and GRPO are ``rloo.train`` and ``grpo.train`` on r*."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "PPO":
        return rlhf.train, with_true_reward(prepared), {}, {"missing_eos_penalty": 0.0}
    if method in ("DPO", "IPO"):
        data = prepared.train_prefs.encode(prepared.tokenizer) if data is None else data
        return dpo.train, data, {"ref": prepared.sft}, {"loss_type": "sigmoid" if method == "DPO" else "ipo"}
    return (rloo.train if method == "RLOO" else grpo.train), prepared, {}, {}


def train_method(method: str, prepared, beta: float, seed: int, data: dict | None = None, *, callback=None,
                 **settings):
    """Train ``method`` (one of ``METHODS``, as ``method_call`` says) at ``beta`` and ``seed``; returns
    ``(model, history)``, the trained causal LM and its ``History``. ``settings`` go to the trainer.
    ``callback(policy) -> dict`` (DPO and IPO only) is called before training and after every
    epoch, its numbers logged as ``eval/<name>``.
    """
    train, inputs, extras, fixed = method_call(method, prepared, data)
    if callback is not None and method not in ("DPO", "IPO"):
        raise ValueError(f"callback is for the epochs of DPO and IPO, not {method}")
    if callback is not None:   # an evaluation before training and after each pass over the pairs
        batch = settings.get("batch_size", dpo.DPOConfig.batch_size)
        extras = {**extras, "callback": callback, "eval_every": math.ceil(len(inputs["prompt_ids"]) / batch)}
    out = train(inputs, beta=beta, seed=seed, **extras, **fixed, **settings)
    return out.model, out.history


def _measure(m: dict) -> dict:
    return {"r_star": m["r_star"], "r_star/se": m["r_star/se"], "kl": m["kl/exact_per_sequence"],
            "kl/se": m["kl/exact_per_sequence/se"]}


def _one_run(prepared, data, run: dict, n_repeats: int) -> dict:
    """One run of ``train_runs`` (on one torch thread: ``parallel.Pool``, in this process or a worker)."""
    settings = dict(run.get("settings", {}))
    callback = None
    if run.get("per_epoch", False):
        callback = lambda policy: _measure(measure.evaluate(policy, prepared, n_repeats=n_repeats))
    start = time.perf_counter()
    model, history = train_method(run["method"], prepared, run["beta"], run["seed"], data, callback=callback,
                                  **settings)
    seconds = time.perf_counter() - start
    if callback is None:
        measured = _measure(measure.evaluate(model, prepared, n_repeats=n_repeats))
    else:                      # the evaluation after the last epoch is the final one
        measured = {k: float(history.update_array(f"eval/{k}")[-1]) for k in ("r_star", "r_star/se", "kl", "kl/se")}
    return {**run, **measured, "seconds": seconds, "history": history}


def _start_worker(prepared) -> tuple:
    return prepared, prepared.train_prefs.encode(prepared.tokenizer)


def _run_in_worker(n_repeats: int, state: tuple, run: dict) -> dict:
    return _one_run(*state, run, n_repeats)


class Workers:
    """Processes that run ``train_runs``' runs, started once for several calls: each receives
    ``prepared`` once and keeps it. ``n`` processes (default: one per core on a CPU; on a GPU one,
    which means this process: no workers). Use as ``with Workers(prepared) as w: ...`` or call
    ``close()``; pass it as ``train_runs(prepared, runs, workers=w)``. A ``parallel.Pool``."""

    def __init__(self, prepared, n: int | None = None):
        self.prepared = prepare.check_prepared("prepared", prepared)
        self.n = check_positive_int("n", n) if n is not None else (cores() if prepared.device.type == "cpu" else 1)
        self._pool = Pool(self.n, initializer=_start_worker, initargs=(prepared,))

    def map(self, runs: list[dict], n_repeats: int = 1) -> list[dict]:
        """``train_runs``' results for ``runs``, in order; a failed run (or Ctrl-C) stops the runs
        that have not started."""
        return self._pool.map(functools.partial(_run_in_worker, n_repeats), runs)

    def close(self):
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def train_runs(prepared, runs: list[dict], *, n_repeats: int = 1, workers: "int | Workers | None" = None) -> list[dict]:
    """Train and evaluate every run of ``runs``, each a dict with ``method``, ``beta``, ``seed``
    and optionally ``settings`` (keyword arguments of the trainer) and ``per_epoch`` (DPO, IPO:
    evaluate before training and after every epoch, logged as ``eval/r_star``, ``eval/kl``, ...).

    Returns one dict per run, in order: the run's own keys, then ``r_star``, ``kl`` (mean over the
    ``n_repeats`` x ``len(prepared.eval_prompts)`` samples of ``measure.evaluate``) with their
    standard errors ``r_star/se`` and ``kl/se``, ``seconds`` (training) and ``history``. Runs are
    spread over ``workers`` processes: a number (default: one per core on a CPU, at most one per
    run; one on a GPU; 1: in this process) or a started ``Workers``. Each run is on one torch
    thread, so the numbers do not depend on ``workers``. Put long runs first.
    """
    runs = [dict(r) for r in runs]
    for r in runs:
        missing = {"method", "beta", "seed"} - set(r)
        if missing:
            raise ValueError(f"each run needs method, beta and seed; {r} lacks {sorted(missing)}")
    n_repeats = check_positive_int("n_repeats", n_repeats)
    if isinstance(workers, Workers):
        if workers.prepared is not prepared:
            raise ValueError("workers were started with another prepared")
        return workers.map(runs, n_repeats)
    if workers is None:
        workers = cores() if prepared.device.type == "cpu" else 1
    with Workers(prepared, min(check_positive_int("workers", workers), max(len(runs), 1))) as pool:
        return pool.map(runs, n_repeats)


def sweep(prepared, betas: dict, seeds, settings: dict | None = None, *, n_repeats: int = 1,
          workers: int | None = None) -> list[dict]:
    """Train every method of ``betas`` (method -> list of beta) at every seed (``train_runs``); one
    row per run: ``method``, ``beta``, ``seed``, ``r_star`` and ``kl`` on ``prepared.eval_prompts``
    (``n_repeats`` samples per prompt) with their standard errors ``r_star/se`` and ``kl/se``,
    ``seconds``."""
    settings = settings or {}
    betas, seeds = _check_betas(betas), _check_seeds(seeds)
    runs = [{"method": m, "beta": b, "seed": s, "settings": settings.get(m, {})}
            for m, method_betas in betas.items() for b in method_betas for s in seeds]
    rows = train_runs(prepared, runs, n_repeats=n_repeats, workers=workers)
    return [{k: v for k, v in row.items() if k not in ("settings", "history")} for row in rows]


def _check_betas(betas) -> dict:
    if not isinstance(betas, dict):
        raise TypeError(f"betas must be a dict {{method: list of betas}}, got {type(betas).__name__}")
    for method, values in betas.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"betas[{method!r}] must be a list of betas, got {type(values).__name__} {values!r:.40}")
    return betas


def _check_seeds(seeds) -> list:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a list of seeds, got {type(seeds).__name__} {seeds!r:.40}")
    return list(seeds)


def per_epoch(runs: list[dict], key: str) -> dict:
    """The evaluations of ``train_runs``' ``per_epoch`` runs, stacked per method: ``{method:
    array [runs, epochs + 1]}`` of ``eval/<key>`` (``"r_star"``, ``"kl"``, ...), column 0 at pi_ref,
    column e after epoch e, one row per run in ``runs``' order."""
    out = {}
    for run in runs:
        if not run.get("per_epoch", False):
            raise ValueError(f"run {run['method']}, seed {run['seed']} was not evaluated per epoch (per_epoch=True)")
        out.setdefault(run["method"], []).append(run["history"].update_array(f"eval/{key}"))
    return {m: np.stack(rows) for m, rows in out.items()}


def epoch_rows(runs: list[dict], epoch: int) -> list[dict]:
    """``sweep``'s rows (``method``, ``beta``, ``seed``, ``r_star``, ``r_star/se``, ``kl``, ``kl/se``,
    ``seconds``) for ``train_runs``' ``per_epoch`` runs as evaluated after ``epoch`` (0: pi_ref):
    the same numbers as a run of ``epoch`` epochs, which the evaluations do not perturb."""
    keys = ("r_star", "r_star/se", "kl", "kl/se")
    stacked = {k: per_epoch(runs, k) for k in keys}
    seen = {}
    rows = []
    for run in runs:
        i = seen[run["method"]] = seen.get(run["method"], -1) + 1
        if not 0 <= epoch < stacked["kl"][run["method"]].shape[1]:
            raise ValueError(f"epoch must be in [0, {stacked['kl'][run['method']].shape[1] - 1}], got {epoch}")
        rows.append({"method": run["method"], "beta": run["beta"], "seed": run["seed"],
                     **{k: float(stacked[k][run["method"]][i, epoch]) for k in keys}, "seconds": float("nan")})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, beta): ``n`` seeds; the mean over seeds of ``r_star`` and ``kl``, its standard
    error over seeds (``r_star_se``, ``kl_se``: s / sqrt(n), NaN for one seed), the sample std,
    min and max (``r_star_std`` ... ``kl_max``); ``eval_se``, the mean of the runs' own ``r_star/se``
    (the sampling error of one evaluation, where the rows have it); mean ``seconds`` (NaN where rows lack it)."""
    groups = {}
    for i, row in enumerate(rows):
        missing = [k for k in ("method", "beta", "r_star", "kl") if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"rows[{i}] must be a dict with method, beta, r_star and kl (sweep's rows), "
                             f"lacks {missing}")
        groups.setdefault((row["method"], row["beta"]), []).append(row)
    out = []
    for (method, beta), runs in groups.items():
        r, kl = np.array([x["r_star"] for x in runs]), np.array([x["kl"] for x in runs])
        spread = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0
        se = lambda a: standard_error(a) if len(a) > 1 else float("nan")
        eval_se = [x["r_star/se"] for x in runs if "r_star/se" in x]
        out.append({"method": method, "beta": beta, "n": len(runs), "r_star": float(r.mean()), "r_star_se": se(r),
                    "r_star_std": spread(r), "kl": float(kl.mean()), "kl_se": se(kl), "kl_std": spread(kl),
                    "r_star_min": float(r.min()), "r_star_max": float(r.max()),
                    "kl_min": float(kl.min()), "kl_max": float(kl.max()),
                    "eval_se": float(np.mean(eval_se)) if eval_se else float("nan"),
                    "seconds": float(np.mean([x.get("seconds", np.nan) for x in runs]))})
    return out


def format_table(table: list[dict]) -> str:
    """``summarize``'s rows as text: method, beta, seeds, mean r* over seeds +- its standard error
    [lowest, highest seed], the same for the KL, and one evaluation's standard error of r*."""
    w = max([6] + [len(s["method"]) for s in table])
    lines = [f"{'method':{w}s} beta  seeds  r* mean +- se [min, max] over seeds    KL nats mean +- se [min, max]"
             "   se of one r*"]
    for s in table:
        lines.append(f"{s['method']:{w}s} {s['beta']:4.2f} {s['n']:4d}    {s['r_star']:+.3f} +- {s['r_star_se']:.3f} "
                     f"[{s['r_star_min']:+.3f}, {s['r_star_max']:+.3f}]    {s['kl']:5.2f} +- {s['kl_se']:.2f} "
                     f"[{s['kl_min']:.2f}, {s['kl_max']:.2f}]      {s['eval_se']:.3f}")
    return "\n".join(lines)


def gap_to_curve(table: list[dict], reference: str, method: str) -> list[dict]:
    """How far each point of ``method`` lies below ``reference``'s frontier, from ``summarize``'s
    rows: ``reference``'s mean r* interpolated linearly in mean KL (its points sorted by KL) minus
    ``method``'s mean r*. Only points whose mean KL lies inside ``reference``'s KL range count (no
    extrapolation). One dict per such point: ``beta``, ``kl``, ``gap`` (positive: below)."""
    ref = sorted((s for s in table if s["method"] == reference), key=lambda s: s["kl"])
    points = [s for s in table if s["method"] == method]
    if len(ref) < 2:
        raise ValueError(f"reference must have at least 2 points in table, got {len(ref)} for {reference!r}")
    if not points:
        raise ValueError(f"method {method!r} has no point in table")
    kl, r = [s["kl"] for s in ref], [s["r_star"] for s in ref]
    return [{"beta": s["beta"], "kl": s["kl"], "gap": float(np.interp(s["kl"], kl, r) - s["r_star"])}
            for s in points if kl[0] <= s["kl"] <= kl[-1]]


def budget(method: str, settings: dict | None = None, n_pairs: int | None = None) -> dict:
    """What one run of ``method`` with ``settings`` (as for ``train_method``) spends: ``updates``
    (collect-then-update iterations, or epochs for DPO/IPO), ``adam_steps`` (optimiser steps),
    ``responses`` (responses sampled from the policy; 0 offline), ``pairs`` (preference pairs
    read, ``epochs * n_pairs``; 0 online) and ``lr``, from each trainer's config defaults."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    settings = dict(settings or {})
    if method in ("DPO", "IPO"):
        if n_pairs is None:
            raise ValueError(f"n_pairs must be a positive int for {method}, got {n_pairs!r}")
        n_pairs = check_positive_int("n_pairs", n_pairs)
        cfg = dpo.DPOConfig(loss_type="sigmoid" if method == "DPO" else "ipo", **settings)
        return {"updates": cfg.epochs, "adam_steps": cfg.epochs * math.ceil(n_pairs / cfg.batch_size),
                "responses": 0, "pairs": cfg.epochs * n_pairs, "lr": cfg.lr}
    if method == "PPO":
        cfg = rlhf.RLHFConfig(**settings)
        n, per_epoch = cfg.batch_size, cfg.minibatch_size or cfg.batch_size
        epochs = cfg.epochs
    elif method == "GRPO":
        cfg = grpo.GRPOConfig(**settings)
        n = cfg.batch_size * cfg.num_generations
        per_epoch, epochs = cfg.minibatch_size or n, cfg.epochs
    else:
        cfg = rloo.RLOOConfig(**settings)
        n = per_epoch = cfg.batch_size * cfg.num_generations
        epochs = 1
    return {"updates": cfg.steps, "adam_steps": cfg.steps * epochs * math.ceil(n / min(per_epoch, n)),
            "responses": cfg.steps * n, "pairs": 0, "lr": cfg.lr}
