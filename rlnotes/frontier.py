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
another's frontier.

Chapter 5's frontier, DPO against RLHF-PPO on the learned reward r_phi (``DPO_PPO_METHODS``):
``dpo_ppo_point`` trains one and measures it (``FRONTIER_KEYS``, optionally at DPO checkpoints),
``dpo_ppo_frontier`` runs many such points over the cores.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from . import dpo, grpo, measure, rlhf, rloo
from .pairs import check_pairs, reference_logps
from .reward import VerifiableReward
from .stats import standard_error
from .trainer import make_config
from .utils import check_positive_int

METHODS = ("PPO", "DPO", "IPO", "RLOO", "GRPO")


def with_true_reward(prepared):
    """``prepared`` with the verifiable reward r* (``reward.VerifiableReward``) in place of r_phi."""
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one thread per run, in this process or a worker: the same bits either way
    try:
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
    finally:
        torch.set_num_threads(threads)
    return {**run, **measured, "seconds": seconds, "history": history}


_WORKER = {}


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


def _start_worker(payload: bytes):
    torch.set_num_threads(1)
    prepared = pickle.loads(payload)
    _WORKER["prepared"] = prepared
    _WORKER["data"] = prepared.train_prefs.encode(prepared.tokenizer)


def _run_in_worker(run: dict, n_repeats: int) -> dict:
    return _one_run(_WORKER["prepared"], _WORKER["data"], run, n_repeats)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Workers:
    """Processes that run ``train_runs``' runs, started once for several calls: each receives
    ``prepared`` once and keeps it. ``n`` processes (default: one per core on a CPU; on a GPU one,
    which means this process: no workers). Use as ``with Workers(prepared) as w: ...`` or call
    ``close()``; pass it as ``train_runs(prepared, runs, workers=w)``."""

    def __init__(self, prepared, n: int | None = None):
        self.prepared = prepared
        self.n = check_positive_int("n", n) if n is not None else (_cores() if prepared.device.type == "cpu" else 1)
        self._pool = None
        if self.n > 1:
            buffer = io.BytesIO()
            _Pickler(buffer).dump(prepared)
            self._pool = ProcessPoolExecutor(self.n, mp_context=get_context("spawn"), initializer=_start_worker,
                                             initargs=(buffer.getvalue(),))

    def map(self, runs: list[dict], n_repeats: int = 1) -> list[dict]:
        """``train_runs``' results for ``runs``, in order."""
        if self._pool is None:
            data = self.prepared.train_prefs.encode(self.prepared.tokenizer)
            return [_one_run(self.prepared, data, r, n_repeats) for r in runs]
        futures = [self._pool.submit(_run_in_worker, r, n_repeats) for r in runs]
        try:
            return [f.result() for f in futures]
        except BaseException:      # a failed run (or Ctrl-C) stops the runs that have not started
            for f in futures:
                f.cancel()
            raise

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

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
        workers = _cores() if prepared.device.type == "cpu" else 1
    with Workers(prepared, min(check_positive_int("workers", workers), max(len(runs), 1))) as pool:
        return pool.map(runs, n_repeats)


def sweep(prepared, betas: dict, seeds, settings: dict | None = None, *, n_repeats: int = 1,
          workers: int | None = None) -> list[dict]:
    """Train every method of ``betas`` (method -> list of beta) at every seed (``train_runs``); one
    row per run: ``method``, ``beta``, ``seed``, ``r_star`` and ``kl`` on ``prepared.eval_prompts``
    (``n_repeats`` samples per prompt) with their standard errors ``r_star/se`` and ``kl/se``,
    ``seconds``."""
    settings = settings or {}
    runs = [{"method": m, "beta": b, "seed": s, "settings": settings.get(m, {})}
            for m, method_betas in betas.items() for b in method_betas for s in seeds]
    rows = train_runs(prepared, runs, n_repeats=n_repeats, workers=workers)
    return [{k: v for k, v in row.items() if k not in ("settings", "history")} for row in rows]


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
    (the sampling error of one evaluation, where the rows have it); mean ``seconds``."""
    groups = {}
    for row in rows:
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
                    "seconds": float(np.mean([x["seconds"] for x in runs]))})
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

# ---------------------------------------------------------------------------------------------
# Chapter 5's reward-KL frontier over seeds: DPO and RLHF-PPO at one beta (section 5.7)
# ---------------------------------------------------------------------------------------------

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


_FRONTIER_WORKER = {}


def _frontier_worker_init(prepared, data, eval_data):
    import transformers

    torch.set_num_threads(1)
    # transformers registers what a model class can record (hidden states, which the value head of
    # RLHF-PPO reads) when a model of that class is built; a process that only unpickles models has
    # built none, so build one throwaway model per class first (weights from a forked generator)
    classes = {type(m): m.config for obj in vars(prepared).values() if isinstance(obj, torch.nn.Module)
               for m in obj.modules() if isinstance(m, transformers.PreTrainedModel)}
    with torch.random.fork_rng():
        for cls, config in classes.items():
            cls(config)
    _FRONTIER_WORKER.update(prepared=prepared, data=data, eval_data=eval_data,
                            ref_logps=reference_logps(prepared.sft, data))


def _frontier_job(point: dict) -> dict:
    w = _FRONTIER_WORKER
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
    points = [dict(p) for p in points]
    for p in points:
        if not {"method", "beta"} <= set(p):
            raise ValueError(f"each point needs a method and a beta, got {p}")
    workers = min(len(points), _cores() if workers is None else check_positive_int("workers", workers))
    if workers <= 1:
        threads = torch.get_num_threads()
        saved = dict(_FRONTIER_WORKER)
        try:
            _frontier_worker_init(prepared, data, eval_data)
            return [_frontier_job(p) for p in points]
        finally:
            torch.set_num_threads(threads)
            _FRONTIER_WORKER.clear()
            _FRONTIER_WORKER.update(saved)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_frontier_worker_init,
                             initargs=(prepared, data, eval_data)) as pool:
        return list(pool.map(_frontier_job, points))
