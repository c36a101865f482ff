"""Chapter 7: best-of-n sampling, its KL to pi_ref, and Gao et al.'s over-optimisation curves.

- ``bon_kl(n)``: the closed form log n - (n - 1)/n (eq. bon-kl).
- ``bon_distribution``, ``exact_bon_kl``: the exact best-of-n policy over a finite set of responses
  (eq. bon-dist) and its KL, which ``bon_kl`` bounds (Beirami et al. 2024).
- ``sample_pool``, ``best_of_n``, ``bon_curve``, ``empirical_bon_kl``: best-of-n on the toy task,
  scored by r_phi (or r*), its mean rewards for every n <= N from one pool, and a Monte Carlo KL.
- ``fit_bon``, ``fit_rl``: Gao, Schulman and Hilton (2023)'s forms d(alpha - beta d) and
  d(alpha - beta log d), d = sqrt(KL), fitted by least squares with bootstrap intervals over seeds;
  ``peak_difference`` compares two fits' peaks on paired seeds; ``bin_means`` puts RL runs on one d axis.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from . import lm, measure, prepare, reward, rlhf, sampling, sentiment, stats
from .trainer import kept_as_found
from .utils import check_choice, check_finite, check_in_range, check_positive_int, check_seed


def _floats(name: str, value) -> np.ndarray:
    """``value`` as a float64 array, or ``TypeError`` naming ``name`` if it does not hold numbers."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must hold numbers, got {value!r:.80}") from None

# ------------------------------------------------------------------ closed forms

def bon_kl(n: int) -> float:
    """KL(pi_bon || pi_ref) = log n - (n - 1)/n (eq. bon-kl; Stiennon et al. 2020, appendix G.3).

    Exact for continuous rewards (no ties); for a discrete set of responses it is an upper bound
    (Beirami et al. 2024), approached when every response has a small probability.
    """
    n = check_positive_int("n", n)
    return math.log(n) - (n - 1) / n


def _probs_and_rewards(ref_probs, rewards) -> tuple[np.ndarray, np.ndarray]:
    p, r = _floats("ref_probs", ref_probs), _floats("rewards", rewards)
    if p.ndim != 1 or r.shape != p.shape or len(p) == 0:
        raise ValueError(f"ref_probs and rewards must be 1-D of one length >= 1, got shapes {p.shape} and {r.shape}")
    if not (np.isfinite(p).all() and (p >= 0).all() and abs(p.sum() - 1) < 1e-6):
        raise ValueError(f"ref_probs must be finite, >= 0 and sum to 1, got sum {p.sum():.6g}")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    return p, r


def bon_distribution(ref_probs, rewards, n: int) -> np.ndarray:
    """pi_bon(y) = F(y)^n - F_<(y)^n (eq. bon-dist): the law of the highest-reward response of n draws from pi_ref.

    F(y) = P_ref(r(Y) <= r(y)), F_<(y) = P_ref(r(Y) < r(y)). Ties: responses of equal reward form one
    group, whose mass F^n - F_<^n is shared in proportion to pi_ref, which is the law of the chosen
    response when a tie is broken by position among the n draws (``torch.argmax`` keeps the first),
    since the draws are exchangeable. Responses of zero probability get 0. Returns float64 [M].
    """
    p, r = _probs_and_rewards(ref_probs, rewards)
    n = check_positive_int("n", n)
    levels, group = np.unique(r, return_inverse=True)          # ascending reward levels
    mass = np.bincount(group, weights=p, minlength=len(levels))
    F = np.minimum(np.cumsum(mass), 1.0)
    F_below = np.concatenate([[0.0], F[:-1]])
    top = F ** n - F_below ** n                                 # P(max reward is this level)
    share = np.divide(p, mass[group], out=np.zeros_like(p), where=mass[group] > 0)
    return top[group] * share


def exact_bon_kl(ref_probs, rewards, n: int) -> float:
    """KL(pi_bon || pi_ref) = sum_y pi_bon(y) log(pi_bon(y) / pi_ref(y)) over a finite set, 0 log 0 = 0."""
    p, _ = _probs_and_rewards(ref_probs, rewards)
    q = bon_distribution(ref_probs, rewards, n)
    keep = q > 0
    return float(max(0.0, np.sum(q[keep] * (np.log(q[keep]) - np.log(p[keep])))))


# ------------------------------------------------------------------ best-of-n on the toy task

@torch.no_grad()
def sample_pool(policy, prepared, prompts: list[str], n: int, *, seed: int = 0, reward_models: dict | None = None,
                chunk: int = 4096) -> dict:
    """n responses y ~ pi(.|x) per prompt (``sampling.sample(k=n)``, one seeded generator), scored by r_phi and r*.

    Returns ``responses`` (B lists of n strings), ``r_phi`` and ``r_star`` (float64 [B, n]) and ``finished``
    (bool [B, n]: the response emitted EOS within ``task.max_response_tokens``; r_phi never saw the
    rest, and ``rlhf.train`` docks them ``missing_eos_penalty``). ``reward_models``: more scorers
    {name: model called as ``prepared.reward_model`` is}, whose scores of the same responses come
    back under their names (other reward models on one pool). Prompts are
    run ``chunk // n`` at a time (at least one), so memory stays bounded for large n.
    """
    model = measure.check_causal_lm("policy", policy.lm if isinstance(policy, rlhf.PolicyWithValue) else policy)
    prepared = prepare.check_prepared("prepared", prepared)
    prompts = sentiment.check_texts("prompts", prompts)
    n = check_positive_int("n", n)
    if n > sampling.MAX_SAMPLES_PER_PROMPT:
        raise ValueError(f"n must be <= {sampling.MAX_SAMPLES_PER_PROMPT} (sampling.MAX_SAMPLES_PER_PROMPT, samples "
                         f"per prompt), got {n}")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(check_seed("seed", seed))
    tok, task, per = prepared.tokenizer, prepared.task, max(1, check_positive_int("chunk", chunk) // n)
    extra = _check_scorers(reward_models)
    texts, r_phi, r_star, finished, more = [], [], [], [], {name: [] for name in extra}
    with kept_as_found(model):
        model.eval()
        for i in range(0, len(prompts), per):
            xs = prompts[i:i + per]
            p, pm = lm.encode_prompts(tok, xs, device)
            ids, mask = sampling.sample(model, tok, p, pm, task.max_response_tokens, generator=gen, k=n)
            ys = lm.decode_responses(tok, ids, mask)
            scores = reward.check_rewards("prepared.reward_model", prepared.reward_model(p, pm, ids, mask), len(ys))
            for name, rm in extra.items():
                score = reward.check_rewards(f"reward_models[{name!r}]", rm(p, pm, ids, mask), len(ys))
                more[name].append(score.double().view(len(xs), n).cpu())
            finished.append((ids == tok.eos_token_id).logical_and(mask.bool()).any(1).view(len(xs), n).cpu())
            texts += [ys[j * n:(j + 1) * n] for j in range(len(xs))]
            r_phi.append(scores.double().view(len(xs), n).cpu())
            r_star.append(task.true_rewards([x for x in xs for _ in range(n)], ys).double().view(len(xs), n))
    return {"responses": texts, "r_phi": torch.cat(r_phi).numpy(), "r_star": torch.cat(r_star).numpy(),
            "finished": torch.cat(finished).numpy(), **{name: torch.cat(v).numpy() for name, v in more.items()}}


def _check_scorers(reward_models) -> dict:
    """``sample_pool``'s ``reward_models``: None or a dict {name: callable}; ``TypeError`` naming the culprit."""
    if reward_models is None:
        return {}
    if not isinstance(reward_models, dict):
        raise TypeError(f"reward_models must be a dict {{name: reward model}}, got {type(reward_models).__name__}")
    for name, rm in reward_models.items():
        if not callable(rm):
            raise TypeError(f"reward_models[{name!r}] must be a reward model (called as prepared.reward_model is), "
                            f"got {type(rm).__name__}")
    return dict(reward_models)


def best_of_n(policy, prepared, prompts: list[str], n: int, reward_fn="r_phi", *, seed: int = 0) -> dict:
    """Best-of-n: sample n responses per prompt, keep argmax_i reward_fn(x, y_i) (the first on a tie).

    ``reward_fn``: ``"r_phi"`` (the reward model), ``"r_star"`` (the task's true reward, the control)
    or a callable ``f(prompts, responses)`` returning one number per response (``reward.check_rewards``).
    Returns ``responses`` (the chosen, one per prompt), their ``r_phi`` and ``r_star`` (float64 [B]),
    ``index`` (which of the n was chosen) and the ``pool`` (``sample_pool``'s result).
    """
    pool = sample_pool(policy, prepared, prompts, n, seed=seed)
    if isinstance(reward_fn, str):
        if reward_fn not in ("r_phi", "r_star"):
            raise ValueError(f"reward_fn must be 'r_phi', 'r_star' or a callable, got {reward_fn!r}")
        score = pool[reward_fn]
    elif callable(reward_fn):
        xs = [x for x in prompts for _ in range(n)]
        ys = [y for row in pool["responses"] for y in row]
        score = reward.check_rewards("reward_fn", reward_fn(xs, ys), len(ys), dtype=torch.float64).view(-1, n).numpy()
    else:
        raise TypeError(f"reward_fn must be 'r_phi', 'r_star' or a callable, got {type(reward_fn).__name__}")
    index = score.argmax(axis=1)
    rows = np.arange(len(index))
    return {"responses": [pool["responses"][i][j] for i, j in zip(rows, index)], "r_phi": pool["r_phi"][rows, index],
            "r_star": pool["r_star"][rows, index], "index": index, "pool": pool}


def bon_weights(N: int, n: int) -> np.ndarray:
    """w_i = C(i - 1, n - 1) / C(N, n), i = 1..N: the probability that the i-th lowest of N draws is the
    highest of n drawn from them without replacement (the unbiased best-of-n estimator of Nakano et
    al. 2021, appendix, used by Gao et al. 2023)."""
    N, n = check_positive_int("N", N), check_positive_int("n", n)
    if n > N:
        raise ValueError(f"n must be <= N ({N}), got {n}")
    logc = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # log C(a, b)
    return np.array([math.exp(logc(i - 1, n - 1) - logc(N, n)) if i >= n else 0.0 for i in range(1, N + 1)])


def bon_curve(score, value, ns) -> np.ndarray:
    """E[value of the best of n by score], for each n in ``ns``, from one pool of N >= n samples per prompt.

    ``score``, ``value``: [B, N] (e.g. ``sample_pool``'s r_phi and r*). Each prompt's samples are sorted by
    score and weighted by ``bon_weights`` (unbiased for every n <= N, lower variance than one draw
    of n); returns the mean over prompts, [len(ns)].
    """
    s, v = _floats("score", score), _floats("value", value)
    if s.ndim != 2 or v.shape != s.shape:
        raise ValueError(f"score and value must be [B, N] of one shape, got {s.shape} and {v.shape}")
    check_finite("score", s)
    check_finite("value", v)
    if isinstance(ns, (str, bytes)) or not hasattr(ns, "__iter__"):
        raise TypeError(f"ns must be a list of sample counts n, got {type(ns).__name__} {ns!r:.40}")
    order = np.argsort(s, axis=1, kind="stable")
    v_sorted = np.take_along_axis(v, order, axis=1)
    return np.array([(v_sorted @ bon_weights(s.shape[1], n)).mean() for n in ns])


def empirical_bon_kl(score, n: int) -> float:
    """A Monte Carlo KL(pi_bon || pi_ref): ``exact_bon_kl`` on each prompt's N samples from pi_ref (weights 1/N,
    equal scores merged as one response), averaged over prompts. ``score``: [B, N].

    Plug-in: biased low when n is not small against N (the N samples stand in for pi_ref's tail).
    """
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"score must be [B, N], got shape {s.shape}")
    N = s.shape[1]
    return float(np.mean([exact_bon_kl(np.full(N, 1.0 / N), row, n) for row in s]))


def bin_means(d, r, edges) -> np.ndarray:
    """Per-run means of r over the points whose d falls in [edges[j], edges[j+1]): [runs, bins], NaN where a
    run has no point in a bin. Puts RL runs, logged per update at KLs of their own, on one d axis."""
    d, r = _check_runs(d, r)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
        raise ValueError(f"edges must be increasing, at least 2 of them, got {edges}")
    out = np.full((len(d), len(edges) - 1), np.nan)
    for j, (lo, hi) in enumerate(itertools.pairwise(edges)):
        inside = (d >= lo) & (d < hi)
        counts = inside.sum(axis=1)
        out[counts > 0, j] = (r * inside).sum(axis=1)[counts > 0] / counts[counts > 0]
    return out


# ------------------------------------------------------------------ Gao et al.'s functional forms

def bon_form(d, alpha: float, beta: float) -> np.ndarray:
    """R_bon(d) = d (alpha - beta d), d = sqrt(KL) (Gao et al. 2023, eq. 1)."""
    d = _check_d(d)
    return d * (alpha - beta * d)


def rl_form(d, alpha: float, beta: float) -> np.ndarray:
    """R_RL(d) = d (alpha - beta log d), d = sqrt(KL) (Gao et al. 2023, eq. 2); 0 at d = 0."""
    d = _check_d(d)
    return d * (alpha - beta * np.log(np.where(d > 0, d, 1.0)))


def _check_d(d) -> np.ndarray:
    d = _floats("d", d)
    if not (np.isfinite(d).all() and (d >= 0).all()):
        raise ValueError(f"d must be finite and >= 0 (d = sqrt(KL)), got {d.min() if d.size else d}")
    return d


def _design(kind: str, d: np.ndarray) -> np.ndarray:
    second = d ** 2 if kind == "bon" else d * np.log(np.where(d > 0, d, 1.0))
    return np.stack([d, -second], axis=1)


def _check_runs(d, r) -> tuple[np.ndarray, np.ndarray]:
    d, r = _floats("d", d), _floats("r", r)
    if d.ndim == 1:
        d, r = d[None], r[None] if r.ndim == 1 else r
    if d.ndim != 2 or r.shape != d.shape:
        raise ValueError(f"d and r must be [seeds, points] (or [points]) of one shape, got {d.shape} and {r.shape}")
    if not (np.isfinite(d).all() and np.isfinite(r).all()) or (d < 0).any():
        raise ValueError("d must be finite and >= 0 (d = sqrt(KL)), r finite")
    if d.size < 3:
        raise ValueError(f"need at least 3 points to fit two coefficients, got {d.size}")
    return d, r


def _lstsq(kind: str, d: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(_design(kind, d.ravel()), r.ravel(), rcond=None)[0]


def _peak(kind: str, alpha: float, beta: float) -> float:
    """argmax_d of the form: alpha / (2 beta) for best-of-n, exp(alpha/beta - 1) for RL; inf if beta <= 0."""
    if beta <= 0:
        return math.inf
    return alpha / (2 * beta) if kind == "bon" else math.exp(min(alpha / beta - 1, 700.0))


def _fit(kind: str, d, r, level: float, reps: int, seed: int) -> dict:
    d, r = _check_runs(d, r)
    level = check_in_range("level", level, 0.5, 0.999)    # stats.bootstrap_interval's ranges, checked with one seed too
    reps = check_positive_int("reps", reps, 100)
    alpha, beta = _lstsq(kind, d, r)
    residual = r - (bon_form if kind == "bon" else rl_form)(d, alpha, beta)
    out = {"alpha": float(alpha), "beta": float(beta), "d_peak": _peak(kind, alpha, beta),
           "rmse": float(np.sqrt(np.mean(residual ** 2))), "n_seeds": len(d)}
    if len(d) >= 2:  # percentile bootstrap over seeds (rows): stats.bootstrap_interval on the row indices
        rows = np.arange(len(d), dtype=np.float64)
        refit = lambda idx: _lstsq(kind, d[idx.astype(int)], r[idx.astype(int)])
        for k, name in enumerate(("alpha", "beta")):
            out[name + "_ci"] = stats.bootstrap_interval(rows, lambda idx, k=k: refit(idx)[k], level=level, reps=reps,
                                                         seed=seed)
        # no peak (inf) stands in as 1e300 so that the quantiles stay defined, and comes back as inf
        low, high = stats.bootstrap_interval(rows, lambda idx: min(_peak(kind, *refit(idx)), 1e300), level=level,
                                             reps=reps, seed=seed)
        out["d_peak_ci"] = tuple(math.inf if x >= 1e300 else x for x in (low, high))
    return out


def fit_bon(d, r, *, level: float = 0.95, reps: int = 2000, seed: int = 0) -> dict:
    """Least-squares fit of r = d (alpha - beta d) (``bon_form``), d = sqrt(KL), r the gain over pi_ref.

    ``d``, ``r``: [seeds, points] (or one run, [points]). Returns ``alpha``, ``beta``, ``d_peak`` =
    alpha / (2 beta) (inf when beta <= 0: no peak), ``rmse`` (of the residuals) and, with >= 2 seeds,
    their percentile-bootstrap intervals over seeds (``*_ci``).
    """
    return _fit("bon", d, r, level, reps, seed)


def fit_rl(d, r, *, level: float = 0.95, reps: int = 2000, seed: int = 0) -> dict:
    """Least-squares fit of r = d (alpha - beta log d) (``rl_form``); ``d_peak`` = exp(alpha/beta - 1).
    Otherwise as ``fit_bon``."""
    return _fit("rl", d, r, level, reps, seed)


def peak_difference(d, r_a, r_b, kind: str = "bon", *, level: float = 0.95, reps: int = 2000,
                    seed: int = 0) -> dict:
    """d_peak(a) - d_peak(b) of two fits of one form (``kind``: "bon" or "rl") to runs on the same seeds
    (rows of ``r_a`` and ``r_b`` paired, e.g. two reward models scoring one pool per seed), with a paired
    percentile bootstrap over seeds: each resample refits both on the same rows. A peak at infinity
    (beta <= 0) counts as 1e300. Returns ``difference``, ``ci`` and both ``d_peak``."""
    kind = check_choice("kind", kind, ("bon", "rl"))
    d, r_a = _check_runs(d, r_a)
    _, r_b = _check_runs(d, r_b)
    if len(d) < 2:
        raise ValueError(f"need at least 2 seeds (rows) for a bootstrap, got {len(d)}")
    peak = lambda r, idx: min(_peak(kind, *_lstsq(kind, d[idx], r[idx])), 1e300)  # noqa: E731
    rows = np.arange(len(d), dtype=np.float64)
    diff = lambda idx: peak(r_a, idx.astype(int)) - peak(r_b, idx.astype(int))  # noqa: E731
    everything = np.arange(len(d))
    ci = stats.bootstrap_interval(rows, diff, level=check_in_range("level", level, 0.5, 0.999),
                                  reps=check_positive_int("reps", reps, 100), seed=seed)
    return {"difference": float(diff(everything.astype(np.float64))), "ci": ci,
            "d_peak": (peak(r_a, everything), peak(r_b, everything))}
