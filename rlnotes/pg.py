"""Chapter 1: the policy gradient.

The score-function estimator g = E_t[ grad_theta log pi_theta(a_t|s_t) A_t ] is the gradient
of the loss L^PG(theta) = E_t[ log pi_theta(a_t|s_t) A_t ] with the advantages held fixed.
``pg_loss`` is its negative, so that an optimiser that *minimises* ascends L^PG.
``train`` is vanilla policy gradient (REINFORCE with a learned baseline): one gradient step
on L^PG per batch, advantages from GAE with a value function fitted by regression.
``random_policy_returns``, ``seed_summary``, ``largest_drop`` and ``collapse_update`` measure what
runs achieved (sections 1.4-1.5): the reference to beat, and each learner's spread over seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .kl import mean_kl
from .nets import CategoricalPolicy, ValueNet, fit_value
from .returns import advantage_batch
from .rollout import ControlConfig, Runner
from .trainer import History, Timer, TrainResult, atomic, make_config, progress, run_guard, training_scope
from .utils import check_finite, check_positive, check_positive_int, check_same_shape, check_tensor


def pg_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-L^PG = -mean_t[ log pi_theta(a_t|s_t) * A_t ]; its gradient is minus the score-function estimate.

    ``logp`` and ``advantages`` are tensors of one shape holding at least one sample, finite
    (``ValueError`` naming the argument otherwise; ``TypeError`` for what is not a float tensor)."""
    check_tensor("logp", logp)
    check_tensor("advantages", advantages)
    check_same_shape(logp=logp, advantages=advantages)
    check_finite("logp", logp)
    check_finite("advantages", advantages)
    if 0 in np.shape(logp):
        raise ValueError("logp must hold at least one sample, got an empty tensor")
    return -(logp * advantages).mean()


@dataclass(frozen=True, kw_only=True)
class PGConfig(ControlConfig):
    """Vanilla policy gradient: ``lr`` for the policy's Adam; the value function is fitted with
    ``vf_iters`` full-batch Adam steps at ``vf_lr`` per update."""

    lr: float = 3e-3
    vf_lr: float = 3e-3
    vf_iters: int = 10

    def __post_init__(self):
        super().__post_init__()
        self.check("lr", check_positive)
        self.check("vf_lr", check_positive)
        self.check("vf_iters", check_positive_int)


def train(env_id: str = "CartPole-v1", config: PGConfig | None = None, **overrides) -> TrainResult:
    """Vanilla policy gradient: each batch of ``num_envs * num_steps`` steps gives one Adam step on -L^PG.

    Arguments: those of ``PGConfig`` (``total_steps`` and ``seed`` are required), or a ``config``.
    Returns a ``TrainResult`` (``model`` the policy, ``value_fn``). Logs per update:
    ``env_steps``, ``kl/exact_per_state`` (mean KL[pi_old || pi_new] over the batch's states,
    exact over the actions), ``entropy``, ``loss/value`` and ``seconds``.
    """
    cfg = make_config(PGConfig, config, **overrides)
    history = History()
    result, runner = TrainResult(None, history, cfg), None  # the networks once they exist
    # the guard first: a Ctrl-C while the environments are made and reset also gives TrainingInterrupted
    with run_guard(lambda: result, lambda: runner is not None and runner.close()), training_scope(cfg.seed):
        runner = Runner(env_id, cfg.num_envs, cfg.seed, cfg.gamma, history)
        policy = CategoricalPolicy(runner.obs_dim, runner.n_actions, cfg.hidden)
        value_fn = ValueNet(runner.obs_dim, cfg.hidden)
        pi_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
        vf_opt = torch.optim.Adam(value_fn.parameters(), lr=cfg.vf_lr)
        result = TrainResult(policy, history, cfg, value_fn)
        for _ in progress(range(cfg.updates), cfg.progress, desc="pg"):
            with atomic():
                with Timer() as timer:
                    batch = runner.rollout(policy, value_fn, cfg.num_steps)
                    obs, actions, adv, ret = advantage_batch(batch, cfg.gamma, cfg.lam, cfg.normalize_advantages)
                    dist = policy(obs)
                    loss = pg_loss(dist.log_prob(actions), adv)
                    pi_opt.zero_grad()
                    loss.backward()
                    pi_opt.step()
                    v_loss = fit_value(value_fn, vf_opt, obs, ret, cfg.vf_iters)
                    with torch.no_grad():
                        kl = mean_kl(dist.logits, policy(obs).logits)
                history.log({"env_steps": runner.steps, "kl/exact_per_state": kl, "entropy": dist.entropy().mean(),
                             "loss/value": v_loss, "seconds": timer.seconds})
    return result


# --- ch1: what a run of section 1.4-1.5 achieved, over seeds ---------------------------------

def random_policy_returns(env_id: str = "CartPole-v1", episodes: int = 200, seed: int = 0) -> np.ndarray:
    """Returns G(tau) (undiscounted) of ``episodes`` episodes of the uniformly random policy: the
    reference a learner must beat. Episode i is reset with seed ``seed + i``; the actions come from
    the environment's action space seeded with ``seed``, so the result repeats exactly."""
    import gymnasium as gym

    episodes = check_positive_int("episodes", episodes)
    seed = check_positive_int("seed", seed, 0)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    out = np.empty(episodes)
    try:
        for i in range(episodes):
            env.reset(seed=seed + i)
            done, total = False, 0.0
            while not done:
                _, r, terminated, truncated, _ = env.step(env.action_space.sample())
                total, done = total + float(r), terminated or truncated
            out[i] = total
    finally:
        env.close()
    return out


def _histories(histories) -> list[History]:
    if isinstance(histories, Mapping):
        histories = list(histories.values())
    elif isinstance(histories, History):
        histories = [histories]
    else:
        histories = list(histories)
    if not histories or not all(isinstance(h, History) for h in histories):
        raise TypeError("histories must be a non-empty {seed: History} mapping or sequence of History")
    return histories


def largest_drop(history: History, window: int = 20) -> float:
    """The largest fall of the ``window``-episode mean return below its running best (0 if it never fell)."""
    m = history.moving_mean(check_positive_int("window", window))
    if not len(m):
        raise ValueError("history holds no finished episode")
    return float(np.max(np.maximum.accumulate(m) - m))


def seed_summary(histories, window: int = 20, kl_key: str = "kl/exact_per_state") -> dict:
    """How one learner fared over its seeds (``histories``: {seed: History} or a sequence).

    Arrays with one entry per seed, in the order given: ``final`` the mean return of the last
    ``window`` episodes; ``best`` the best ``window``-episode mean; ``kept`` = final / best;
    ``drop`` :func:`largest_drop`; ``max_kl`` the largest KL[pi_old || pi_new] of one update;
    ``entropy`` the policy's entropy at the last update. Pooled over every update of every seed:
    ``median_kl`` and ``max_kl_all``.
    """
    hs = _histories(histories)
    window = check_positive_int("window", window)
    kls = [h.update_array(kl_key) for h in hs]
    drop = np.array([largest_drop(h, window) for h in hs])  # first: it names a run without episodes
    final = np.array([h.final_mean_return(window) for h in hs])
    best = np.array([h.moving_mean(window).max() for h in hs])
    return dict(final=final, best=best, kept=final / best, drop=drop,
                max_kl=np.array([k.max() for k in kls]), entropy=np.array([h.update_array("entropy")[-1] for h in hs]),
                median_kl=float(np.median(np.concatenate(kls))), max_kl_all=float(max(k.max() for k in kls)))


def collapse_update(history: History, threshold: float = 0.01) -> int | None:
    """The first update (0-based) from which the policy's entropy stays below ``threshold`` nats
    to the end of the run: a policy that has become nearly deterministic. ``None`` if the entropy
    of the last update is at or above ``threshold``."""
    threshold = check_positive("threshold", threshold)
    entropy = history.update_array("entropy")
    above = np.nonzero(entropy >= threshold)[0]
    if len(above) and above[-1] == len(entropy) - 1:
        return None
    return int(above[-1] + 1) if len(above) else 0
