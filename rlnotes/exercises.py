"""Build-it exercises: the reader writes a chapter's key function, ``check`` compares it with rlnotes'.

Each chapter's exercises start one function as a stub in the notebook; the reader fills it in and
runs ``check(their_function, "<exercise>")``, which calls it and rlnotes' own function on the same
random inputs (a fixed seed, so every reader meets the same cases, the awkward ones included: a
done in the middle of a rollout, a ratio far outside the clip range, a margin of 200 nats, a group
whose rewards are all equal) and says which case fails first, where and by how much.

| exercise | chapter | rlnotes' function | the reader returns |
| --- | --- | --- | --- |
| ``gae`` | 1 | ``returns.gae`` | (advantages, returns) |
| ``line_search`` | 2 | ``trpo.line_search`` | (step, backtracks) |
| ``clipped_surrogate`` | 3 | ``ppo.clipped_surrogate`` | the per-sample objective |
| ``reward_loss`` | 4 | ``reward.reward_loss`` | the Bradley-Terry loss |
| ``token_rewards`` | 4 | ``rlhf.token_rewards`` | the per-token rewards [B, T] |
| ``dpo_loss`` | 5 | ``dpo.dpo_loss`` | the per-pair losses |
| ``group_advantages`` | 6 | ``grpo.group_advantages`` | the advantages [B, G] |
| ``bon_distribution`` | 7 | ``bestofn.bon_distribution`` | pi_bon over the responses [M] |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .utils import check_choice, check_positive_int, check_seed

# exercise -> (rlnotes' function as "module.name", what of its result the reader's must match)
REFERENCES = {
    "gae": ("returns.gae", lambda out: out),
    "line_search": ("trpo.line_search", lambda out: (out.step, out.backtracks)),
    "clipped_surrogate": ("ppo.clipped_surrogate", lambda out: out),
    "reward_loss": ("reward.reward_loss", lambda out: out),
    "token_rewards": ("rlhf.token_rewards", lambda out: out),
    "dpo_loss": ("dpo.dpo_loss", lambda out: out[0]),
    "group_advantages": ("grpo.group_advantages", lambda out: out),
    "bon_distribution": ("bestofn.bon_distribution", lambda out: out),
}
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Report:
    """What ``check`` found: ``passed``, the number of ``cases`` tried, and a ``message`` for the reader."""

    exercise: str
    passed: bool
    cases: int
    message: str

    def __repr__(self) -> str:
        return self.message


def reference(exercise: str) -> Callable:
    """rlnotes' own function for ``exercise``."""
    module, name = REFERENCES[check_choice("exercise", exercise, tuple(REFERENCES))][0].split(".")
    return getattr(importlib.import_module(f"rlnotes.{module}"), name)


def _uniform(g, shape, low, high):
    return low + (high - low) * torch.rand(shape, generator=g)


def gae_cases(g) -> Iterator[tuple[str, dict]]:
    """Rollouts of T steps in N environments, dones anywhere, lam and gamma at their ends too."""
    for gamma, lam in ((0.99, 0.95), (0.9, 0.0), (0.9, 1.0), (1.0, 1.0), (0.5, 0.5)):
        for T, N, p_done in ((1, 1, 0.0), (6, 3, 0.3), (8, 2, 0.0), (5, 4, 0.6)):
            dones = (torch.rand(T, N, generator=g) < p_done).float()
            args = dict(rewards=torch.randn(T, N, generator=g), values=torch.randn(T, N, generator=g), dones=dones,
                        last_value=torch.randn(N, generator=g), gamma=gamma, lam=lam)
            yield f"T={T}, N={N}, {int(dones.sum())} dones, gamma={gamma}, lam={lam}", args


def line_search_cases(g) -> Iterator[tuple[str, dict]]:
    """A quadratic surrogate and KL around theta_old: improvement g.s - s.H.s/2, KL s.F.s/2."""
    for n, delta, scale in ((2, 0.01, 0.05), (3, 0.01, 1.0), (4, 0.05, 10.0), (3, 0.01, 1e3), (2, 0.02, -1.0)):
        grad, a, b = torch.randn(n, generator=g), torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        hess, fisher = a @ a.T / n, b @ b.T / n + 0.1 * torch.eye(n)

        def evaluate(step, grad=grad, hess=hess, fisher=fisher):
            return float(grad @ step - step @ hess @ step / 2), float(step @ fisher @ step / 2)

        yield (f"{n} parameters, delta={delta}, full step {scale} x the gradient",
               dict(evaluate=evaluate, full_step=scale * grad, delta=delta, max_backtracks=10, shrink=0.8))


def clipped_surrogate_cases(g) -> Iterator[tuple[str, dict]]:
    """Ratios inside and far outside [1 - eps, 1 + eps], advantages of both signs and zero."""
    for eps, low, high in ((0.2, 0.9, 1.1), (0.2, 0.1, 3.0), (0.1, 0.5, 1.5), (0.3, 1e-3, 10.0)):
        ratio, adv = _uniform(g, (32,), low, high), torch.randn(32, generator=g)
        adv[:4] = 0.0
        yield f"eps={eps}, ratios in [{low}, {high}], some advantages 0", dict(ratio=ratio, advantages=adv, eps=eps)


def reward_loss_cases(g) -> Iterator[tuple[str, dict]]:
    """Pairs with small, large and huge reward margins (a naive log(sigmoid(.)) is -inf at -200)."""
    for n, scale in ((1, 1.0), (16, 1.0), (16, 10.0), (8, 200.0)):
        yield (f"{n} pairs, rewards of scale {scale}",
               dict(r_chosen=scale * torch.randn(n, generator=g), r_rejected=scale * torch.randn(n, generator=g)))


def token_rewards_cases(g) -> Iterator[tuple[str, dict]]:
    """Responses of different lengths (mask right-padded), r_phi on each one's last real token."""
    for B, T, beta in ((1, 1, 0.1), (3, 5, 0.05), (4, 6, 0.5), (2, 4, 0.0)):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None] < lengths[:, None]).float()
        logp, logp_ref = -_uniform(g, (B, T), 0.1, 3.0), -_uniform(g, (B, T), 0.1, 3.0)
        yield (f"B={B}, T={T}, lengths {lengths.tolist()}, beta={beta}",
               dict(r_phi=torch.randn(B, generator=g), logp=logp * mask, logp_ref=logp_ref * mask, mask=mask,
                    beta=beta))


def dpo_loss_cases(g) -> Iterator[tuple[str, dict]]:
    """Log-probabilities of chosen and rejected responses; margins up to hundreds of nats."""
    for n, spread, beta in ((1, 1.0, 0.1), (16, 5.0, 0.1), (16, 5.0, 1.0), (8, 300.0, 0.5)):
        logps = [-_uniform(g, (n,), 0.0, spread) - 1.0 for _ in range(4)]
        yield (f"{n} pairs, log-probs spread over {spread} nats, beta={beta}",
               dict(policy_chosen_logps=logps[0], policy_rejected_logps=logps[1], ref_chosen_logps=logps[2],
                    ref_rejected_logps=logps[3], beta=beta))


def group_advantages_cases(g) -> Iterator[tuple[str, dict]]:
    """Groups of G rewards per prompt, with and without the std scaling, one group all equal."""
    for B, G, scale in ((1, 2, True), (4, 4, True), (3, 8, False), (5, 3, True)):
        rewards = torch.randn(B, G, generator=g)
        rewards[0] = rewards[0, 0]          # a group whose rewards are all equal: its advantages are 0
        yield f"B={B} groups of G={G}, scale={scale}, group 0 all equal", dict(rewards=rewards, scale=scale)


def bon_distribution_cases(g) -> Iterator[tuple[str, dict]]:
    """pi_ref over M responses with distinct rewards, then with ties, for n = 1 up to 256."""
    for M, n, ties in ((3, 1, False), (5, 4, False), (8, 256, False), (6, 16, True)):
        probs = torch.softmax(torch.randn(M, generator=g, dtype=torch.float64), 0)
        rewards = torch.randn(M, generator=g, dtype=torch.float64)
        if ties:                            # equal rewards share their group's mass in proportion to pi_ref
            rewards[1], rewards[4] = rewards[0], rewards[0]
        yield (f"M={M} responses, n={n}" + (", responses 0, 1 and 4 tied" if ties else ""),
               dict(ref_probs=probs.numpy(), rewards=rewards.numpy(), n=n))


CASES = {"gae": gae_cases, "line_search": line_search_cases, "clipped_surrogate": clipped_surrogate_cases,
         "reward_loss": reward_loss_cases, "token_rewards": token_rewards_cases, "dpo_loss": dpo_loss_cases,
         "group_advantages": group_advantages_cases, "bon_distribution": bon_distribution_cases}


def _fresh(args: dict) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v.copy() if hasattr(v, "copy") else v for k, v in args.items()}


def _difference(yours, theirs, path: str = "the result") -> str | None:
    """Where ``yours`` first differs from ``theirs`` (tensors, numbers or tuples of them), or None."""
    if isinstance(theirs, tuple):
        if not isinstance(yours, (tuple, list)) or len(yours) != len(theirs):
            return f"{path} must be a tuple of {len(theirs)}, got {type(yours).__name__}"
        for i, (a, b) in enumerate(zip(yours, theirs)):
            if (found := _difference(a, b, f"item {i} of {path}")) is not None:
                return found
        return None
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    if isinstance(yours, tuple):
        return f"{path} is a tuple of {len(yours)}, rlnotes' is a tensor of shape {tuple(theirs.shape)}"
    try:
        yours = torch.as_tensor(yours.detach() if torch.is_tensor(yours) else yours, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"{path} must be a tensor or a number, got {type(yours).__name__}"
    if yours.shape != theirs.shape:
        return f"{path} has shape {tuple(yours.shape)}, rlnotes' has {tuple(theirs.shape)}"
    close = torch.isclose(yours, theirs, rtol=RTOL, atol=ATOL, equal_nan=False)
    if bool(close.all()):
        return None
    where = tuple(int(i) for i in torch.nonzero(~close)[0]) if close.dim() else ()
    return (f"{path} differs at index {where}: yours {yours[where].item():.6g}, "
            f"rlnotes' {theirs[where].item():.6g}")


def check(fn: Callable, exercise: str, seed: int = 0, n_cases: int | None = None) -> Report:
    """Compare the reader's ``fn`` with rlnotes' function for ``exercise`` on its random cases
    (seeded by ``seed``; the first ``n_cases``, or all). Arguments are passed by name, as rlnotes'
    function takes them, each call on fresh copies. Returns a ``Report`` naming the first case that
    fails and where, or that every case agrees (to rtol 1e-4, atol 1e-5)."""
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote, got {type(fn).__name__}")
    ref, pick = reference(exercise), REFERENCES[exercise][1]
    seed = check_seed("seed", seed)
    cases = list(CASES[exercise](torch.Generator().manual_seed(seed)))
    cases = cases[:check_positive_int("n_cases", n_cases)] if n_cases is not None else cases
    for i, (described, args) in enumerate(cases, start=1):
        try:
            yours = fn(**_fresh(args))
        except NotImplementedError:
            return Report(exercise, False, i, f"{exercise}: not written yet (the stub raises NotImplementedError)")
        except Exception as error:  # the reader's code: any error is the finding
            return Report(exercise, False, i, f"{exercise}: case {i} of {len(cases)} ({described}) raised "
                                              f"{type(error).__name__}: {error}")
        if (found := _difference(yours, pick(ref(**_fresh(args))))) is not None:
            return Report(exercise, False, i, f"{exercise}: case {i} of {len(cases)} ({described}): {found}")
    return Report(exercise, True, len(cases), f"{exercise}: all {len(cases)} cases agree with rlnotes' "
                                               f"{REFERENCES[exercise][0]}")
