"""Chapter 7: likelihood displacement (Razin et al., 2024, "Unintentional Unalignment: Likelihood
Displacement in Direct Preference Optimization"), and where the probability mass goes.

DPO's loss depends on the margin log(pi(y_w|x) / pi_ref(y_w|x)) - log(pi(y_l|x) / pi_ref(y_l|x))
only, so the margin can grow while log pi(y_w|x) itself falls (chapter 5 shows logps/chosen going
from -10.18 to -12.09): both responses lose probability, y_l faster. The mass they lose goes
somewhere else. On the toy task the training set's responses to each of the 48 training prompts
are few and known, so ``mass`` can add up, per prompt, the probability the policy puts on the
training set's chosen responses, on its rejected ones, on those that were both (chosen in one pair,
rejected in another), and, by subtraction from 1, on every other response (``MASS_KEYS``).

``run_point`` trains one method of ``METHODS`` (DPO, IPO: ``dpo.train`` with ``loss_type`` "sigmoid"
or "ipo"; KTO: ``kto.train`` on ``kto.unpaired`` labels of the same pairs) and measures it the same
way: ``mass`` through training, log pi(y_w|x) and log pi(y_l|x) of the training pairs, and the true
reward r*, r_phi and the KL of what the policy now samples (``measure.evaluate``). ``run_points``
runs many of them on the cores (``parallel.Pool``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from . import dpo, kto, measure
from .pairs import check_ref_logps, reference_logps
from .parallel import Pool, cores
from .reward import Preferences, preference_accuracy
from .trainer import check_model
from .utils import check_choice, check_positive, check_positive_int, check_seed

MASS_KEYS = ("chosen", "rejected", "both", "other")
METHODS = ("DPO", "IPO", "KTO")
EVAL_KEYS = ("r_star", "r_star/se", "r_phi", "r_phi/se", "kl/exact_per_sequence", "kl/exact_per_sequence/se")


def check_prefs(prefs) -> Preferences:
    """``prefs`` if it is a ``reward.Preferences``, else ``TypeError`` naming it."""
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a reward.Preferences (e.g. prepare(...).train_prefs), "
                        f"got {type(prefs).__name__}")
    return prefs


def response_sets(prefs: Preferences) -> dict:
    """Per prompt x of ``prefs``, its distinct responses in three sets: ``chosen`` (only ever y_w for x),
    ``rejected`` (only ever y_l) and ``both`` (y_w in one pair, y_l in another): {x: {set: [y, ...]}}."""
    wins, losses = defaultdict(set), defaultdict(set)
    for x, yw, yl in zip(check_prefs(prefs).prompts, prefs.chosen, prefs.rejected):
        wins[x].add(yw)
        losses[x].add(yl)
    return {x: {"chosen": sorted(wins[x] - losses[x]), "rejected": sorted(losses[x] - wins[x]),
                "both": sorted(wins[x] & losses[x])} for x in wins}


@torch.no_grad()
def mass(policy, prefs: Preferences, tokenizer, *, logps: tuple | None = None) -> dict:
    """Where pi(.|x) puts its probability, averaged over the distinct prompts x of ``prefs``: on the
    training set's ``chosen`` responses to x, its ``rejected`` ones, those that were ``both``
    (``response_sets``), and ``other`` = 1 - the three (every response never seen in training).

    Each response's probability is pi(y|x) = exp(log pi(y|x)), its EOS included (as ``Preferences.encode``
    encodes it), so distinct responses are disjoint events; a response in several pairs counts once.
    ``logps``: (log pi(y_w|x), log pi(y_l|x)) of the pairs of ``prefs.encode(tokenizer)``, as
    ``pairs.reference_logps(policy, ...)`` returns them (computed here if None, ``policy`` in eval mode and
    handed back in the modes it came in). Returns {key: float} for ``MASS_KEYS``.
    """
    check_model("policy", policy)
    n = len(check_prefs(prefs))
    if logps is None:
        logps = reference_logps(policy, prefs.encode(tokenizer, device=next(policy.parameters()).device))
    chosen, rejected = check_ref_logps(logps, n)
    seen = {}
    for x, yw, yl, lw, ll in zip(prefs.prompts, prefs.chosen, prefs.rejected, chosen.tolist(), rejected.tolist()):
        seen.setdefault((x, yw), lw)
        seen.setdefault((x, yl), ll)
    sets = response_sets(prefs)
    means = [float(np.mean([sum(np.exp(seen[x, y]) for y in s[key]) for x, s in sets.items()]))
             for key in MASS_KEYS[:3]]
    return {**dict(zip(MASS_KEYS, means)), "other": 1.0 - sum(means)}


def start_worker(prepared, unpair_seed: int = 0) -> dict:
    """What every run of a worker shares: ``prepared``, the train pairs' tensors and the reference's
    log-probabilities of them, and KTO's unpaired labels (``kto.unpaired(..., seed=unpair_seed)``) with theirs."""
    tok = prepared.tokenizer
    pairs = prepared.train_prefs.encode(tok)
    singles = kto.unpaired(prepared.train_prefs, seed=check_seed("unpair_seed", unpair_seed)).encode(tok)
    return {"prepared": prepared, "pairs": pairs, "pairs_ref": reference_logps(prepared.sft, pairs),
            "unpaired": singles, "unpaired_ref": kto.reference_logps(prepared.sft, singles)}


def run_point(prepared, method: str, seed: int = 0, *, beta: float = 0.1, every: int | None = None,
              n_repeats: int = 1, state: dict | None = None, **kwargs) -> dict:
    """Train ``method`` (``METHODS``) from ``prepared.sft`` with ``beta`` and ``seed`` and measure it.

    "DPO" and "IPO": ``dpo.train`` on the train pairs (``loss_type`` "sigmoid", "ipo"); "KTO":
    ``kto.train`` on their ``kto.unpaired`` labels; ``kwargs`` go to the trainer (``epochs``,
    ``batch_size``, ``lr``, ...). ``every``: for DPO and IPO, ``mass`` at steps 0, every, 2 every, ...
    and the end (logged as ``eval/mass/<key>``); None: at the end only. ``state``: ``start_worker``'s,
    to reuse (made here if None). Returns {"history": History, "config", "eval": the end's ``EVAL_KEYS``
    (``measure.evaluate`` on ``n_repeats`` x the held-out prompts), ``mass/<key>``, ``logps/chosen``,
    ``logps/rejected`` (means over the train pairs), ``accuracy`` (implicit reward on them)}.
    """
    method = check_choice("method", method, METHODS)
    beta, seed = check_positive("beta", beta), check_seed("seed", seed)
    every = None if every is None else check_positive_int("every", every)
    w = start_worker(prepared) if state is None else state
    tok = prepared.tokenizer

    def masses(policy):            # dpo.train's callback: mass at the checkpoints
        logps = reference_logps(policy, w["pairs"])
        return {f"mass/{k}": v for k, v in mass(policy, prepared.train_prefs, tok, logps=logps).items()}

    if method == "KTO":
        run = kto.train(w["unpaired"], ref=prepared.sft, ref_logps=w["unpaired_ref"], beta=beta, seed=seed, **kwargs)
    else:
        run = dpo.train(w["pairs"], ref=prepared.sft, ref_logps=w["pairs_ref"], beta=beta, seed=seed,
                        loss_type="sigmoid" if method == "DPO" else "ipo", eval_every=every,
                        callback=masses if every is not None else None, **kwargs)
    m = measure.evaluate(run.model, prepared, n_repeats=check_positive_int("n_repeats", n_repeats))
    (c, r), (ref_c, ref_r) = reference_logps(run.model, w["pairs"]), w["pairs_ref"]
    out = {k: m[k] for k in EVAL_KEYS} | {f"mass/{k}": v for k, v in mass(run.model, prepared.train_prefs, tok,
                                                                          logps=(c, r)).items()}
    out |= {"logps/chosen": c.mean().item(), "logps/rejected": r.mean().item(),
            "accuracy": preference_accuracy(c - ref_c, r - ref_r)}
    return {"history": run.history, "config": run.config, "eval": out}


def _job(state: dict, point: dict) -> dict:
    return run_point(state["prepared"], state=state, **point)


def run_points(prepared, points, *, workers: int | None = None) -> list:
    """``run_point(prepared, **p)`` for each dict ``p`` of ``points`` (``method``, ``seed``, ...), in order,
    on up to ``workers`` processes (default: one per core; 1: here), each on one torch thread, so that the
    results do not depend on the number of processes. Each process makes ``start_worker``'s state once."""
    if isinstance(points, (str, bytes, dict)) or not hasattr(points, "__iter__"):
        raise TypeError(f"points must be a list of dicts (method, seed, ...), got {type(points).__name__}")
    points = [dict(p) if isinstance(p, dict) else p for p in points]
    for i, p in enumerate(points):
        if not isinstance(p, dict) or "method" not in p:
            raise TypeError(f"points[{i}] must be a dict with a method, got {p!r:.60}")
    workers = min(len(points), cores() if workers is None else check_positive_int("workers", workers))
    with Pool(max(workers, 1), initializer=start_worker, initargs=(prepared,)) as pool:
        return pool.map(_job, points)


def by_method(points, results: list, key: str) -> dict:
    """{method: np.array of ``result["eval"][key]``, one per run of that method}, from ``run_points``'
    ``points`` and ``results`` (in their order). ``KeyError`` naming ``key`` if it was not measured."""
    if len(points) != len(results):
        raise ValueError(f"points and results must be of one length, got {len(points)} and {len(results)}")
    if results and key not in results[0]["eval"]:
        raise KeyError(f"key must be one of {sorted(results[0]['eval'])}, got {key!r}")
    out = defaultdict(list)
    for point, result in zip(points, results):
        out[point["method"]].append(result["eval"][key])
    return {m: np.array(v) for m, v in out.items()}
