"""Chapter 3: TRPO and PPO side by side: their runs over seeds, and what one update computes,
counted in passes through the networks.

``train_side_by_side`` trains several settings (trainers and their arguments) on the same seeds,
all the runs in one pool of processes, one per core.

A TRPO update (the TRPO paper's Appendix C; ``rlnotes.trpo.trpo_step``) on a batch needs

- the policy gradient g: one forward and one backward pass;
- the gradient of the mean KL, kept for double backprop: one forward and one backward pass;
- k conjugate-gradient iterations, each a Fisher-vector product F v (a second backward pass
  through the first one's graph: a Hessian-vector product), plus one more for s^T F s;
- a backtracking line search of m trials, each a forward pass for the surrogate and the KL;
- then ``vf_iters`` Adam steps (forward and backward) that fit the value network V.

A PPO update (``rlnotes.ppo.update``) is E epochs of M minibatches, each one forward and one
first-order backward pass of L^{CLIP+VF+S} (eq. 9 of the PPO paper) through the policy and the
value network together, and an Adam step: no Hessian-vector product, no solver, no line search.

``trpo_passes`` reads k and m from a TRPO run's log, ``ppo_passes`` computes E x M from a
configuration, and ``one_update_each`` counts both with hooks (``rlnotes.trpo.count_passes``) on
one shared batch and times them.

Chapter 5 counts the same way what one update of RLHF-PPO and one of DPO compute on a language
model: ``count_passes`` sorts every network call by role (``ROLES``: policy, value head, reference,
reward model) into forward passes, backward passes and decoding steps (``WORK_KEYS``), and
``update_work`` counts both trainers on real runs.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from . import dpo, ppo, trpo
from .actor_critic import ActorCritic, make_optimizer
from .nets import CategoricalPolicy, ValueNet, fit_value
from .pairs import check_pairs
from .parallel import pool_for
from .returns import advantage_batch, normalize
from .seeds import check_seeds
from .rollout import Runner
from .trainer import check_model
from .trainer import History, make_config, rng_scope
from .utils import check_positive_int


def _run(job):
    """``train(seed=seed, **kwargs).history`` for ``job = (name, train, kwargs, seed)``."""
    _, train, kwargs, seed = job
    return train(seed=seed, **kwargs).history


def train_side_by_side(settings: Mapping[str, tuple[Callable, dict]], seeds, *,
                       workers=None) -> dict[str, list[History]]:
    """``{name: [train(seed=s, **kwargs).history for s in seeds]}`` for each ``name: (train, kwargs)``.

    Like ``rlnotes.seeds.train_seeds``, for several settings at once: every (setting, seed) run
    goes to one pool of ``workers`` processes (default: one per core), started once, so the
    workers import torch once for all the settings. Runs are submitted in the order given
    (put the longest first); each runs on one torch thread and is seeded on its own, so the
    histories equal those of calling the trainers one by one on one thread. ``train`` must be
    importable by name (a trainer of rlnotes); ``workers=1`` runs everything in this process, and a
    started ``parallel.Pool`` runs them on its processes (a chapter starts them once).
    """
    seeds = check_seeds(seeds)
    if not isinstance(settings, Mapping) or not settings:
        raise TypeError(f"settings must be a non-empty mapping {{name: (train, kwargs)}}, got {type(settings).__name__}")
    for name, (train, kwargs) in settings.items():
        if not callable(train) or "seed" in kwargs:
            raise TypeError(f"settings[{name!r}] must be (train, kwargs) with a callable train and no 'seed' "
                            "in kwargs (the seeds come from `seeds`)")
    jobs = [(name, train, kwargs, s) for name, (train, kwargs) in settings.items() for s in seeds]
    with pool_for(workers, len(jobs)) as pool:     # one torch thread per run, in this process or a worker
        histories = pool.map(_run, jobs)
    out = {name: [] for name in settings}
    for (name, *_), history in zip(jobs, histories):
        out[name].append(history)
    return out


def trpo_passes(history: History, vf_iters: int = 20) -> dict[str, np.ndarray]:
    """Passes through the networks in each update of a TRPO run, from its log (one entry per update).

    With k = ``cg_iters`` and m line-search trials (``backtracks`` + ``accepted``: the accepted
    trial's index plus one, or all ``max_backtracks`` when every trial failed), returns arrays of
    ``cg_iters`` (k), ``line_search`` (m), ``forward`` (policy: 2 + m), ``backward`` (policy,
    first-order: 2, for g and for the KL's gradient), ``hvp`` (policy, Fisher-vector products by
    double backprop: k + 1, the last for s^T F s) and ``value`` (forward and backward passes of
    the value network: ``vf_iters``).
    """
    vf_iters = check_positive_int("vf_iters", vf_iters)
    try:
        k = history.update_array("cg_iters").astype(int)
        m = (history.update_array("backtracks") + history.update_array("accepted")).astype(int)
    except KeyError as missing:
        raise ValueError(f"history must be a TRPO run's (it logs cg_iters, backtracks, accepted); "
                         f"missing {missing}") from None
    ones = np.ones_like(k)
    return {"cg_iters": k, "line_search": m, "forward": 2 + m, "backward": 2 * ones, "hvp": k + 1,
            "value": vf_iters * ones}


def ppo_passes(config: ppo.PPOConfig) -> dict[str, int]:
    """Passes through the networks in each update of ``ppo.train(config=config)``.

    E = ``epochs`` passes over the batch of ``num_envs * num_steps`` samples in M = ceil(batch /
    ``minibatch_size``) minibatches: E x M forward and E x M first-order backward passes of
    L^{CLIP+VF+S} through the policy and the value network together (one ``ActorCritic`` call
    serves both), 0 Hessian-vector products, no line search, and no separate value fit
    (``value`` is 0: the value network is inside the E x M passes).
    """
    if not isinstance(config, ppo.PPOConfig):
        raise TypeError(f"config must be a ppo.PPOConfig, got {type(config).__name__}")
    minibatches = -(-config.batch_steps // config.minibatch_size)
    steps = config.epochs * minibatches
    return {"epochs": config.epochs, "minibatches": minibatches, "forward": steps, "backward": steps, "hvp": 0,
            "line_search": 0, "value": 0}


def _batch(env_id, seed, trpo_cfg, ppo_cfg):
    """One batch of ``num_envs * num_steps`` steps, collected by a fresh policy; the networks too."""
    with rng_scope(seed):
        runner = Runner(env_id, ppo_cfg.num_envs, seed, ppo_cfg.gamma, History())
        policy = CategoricalPolicy(runner.obs_dim, runner.n_actions, ppo_cfg.hidden)
        value_fn = ValueNet(runner.obs_dim, ppo_cfg.hidden)
        try:
            batch = runner.rollout(policy, value_fn, ppo_cfg.num_steps)
        finally:
            runner.close()
    obs, actions, adv, ret = advantage_batch(batch, trpo_cfg.gamma, trpo_cfg.lam, False)
    logp_old = batch.flat(batch.logp)[0]
    return policy, value_fn, obs, actions, logp_old, adv, ret


def one_update_each(env_id: str = "CartPole-v1", seed: int = 0, repeats: int = 5) -> dict[str, dict]:
    """One TRPO update and one PPO update at their trainers' defaults, on the same batch, counted and timed.

    A fresh policy collects one batch (8 x 64 steps); from the same initial networks, the TRPO
    update is ``trpo.trpo_step`` and ``vf_iters`` steps of ``fit_value``, the PPO update is
    ``ppo.update`` on the two networks packed (``ActorCritic``). ``trpo.count_passes`` counts the
    passes of the first run of each; the update is then run ``repeats`` times more, alternating
    TRPO and PPO so that both see the same machine load, and ``seconds`` is the median wall time.
    Returns {"TRPO": {...}, "PPO": {...}} with ``forward``, ``backward`` (every backward pass,
    Hessian-vector products included), ``value_forward``, ``value_backward`` (TRPO's value network,
    separate; PPO's is inside its own passes) and ``seconds``; TRPO's also has ``cg_iters`` and
    ``line_search`` (trials) from ``trpo_step``'s result.
    """
    repeats = check_positive_int("repeats", repeats)
    seed = check_positive_int("seed", seed, 0)
    trpo_cfg = trpo.TRPOConfig(total_steps=1, seed=seed)
    ppo_cfg = ppo.PPOConfig(total_steps=1, seed=seed)
    policy, value_fn, obs, actions, logp_old, adv, ret = _batch(env_id, seed, trpo_cfg, ppo_cfg)
    generator = torch.Generator().manual_seed(seed)

    def trpo_update(counts):
        pi, v = copy.deepcopy(policy), copy.deepcopy(value_fn)
        with trpo.count_passes(pi) as p, trpo.count_passes(v) as pv:
            info = trpo.trpo_step(pi, obs, actions, normalize(adv), trpo_cfg.delta, cg_iters=trpo_cfg.cg_iters,
                                  damping=trpo_cfg.damping, max_backtracks=trpo_cfg.max_backtracks,
                                  shrink=trpo_cfg.shrink)
            fit_value(v, torch.optim.Adam(v.parameters(), lr=trpo_cfg.vf_lr), obs, ret, trpo_cfg.vf_iters)
        counts.update(p, value_forward=pv["forward"], value_backward=pv["backward"], cg_iters=int(info["cg_iters"]),
                      line_search=int(info["backtracks"] + info["accepted"]))

    def ppo_update(counts):
        net = ActorCritic(copy.deepcopy(policy), copy.deepcopy(value_fn))
        optimizer = make_optimizer(net, ppo_cfg.lr)
        with trpo.count_passes(net) as p:
            ppo.update(net, optimizer, obs, actions, logp_old, adv, ret, ppo_cfg.update_config(1.0), generator)
        counts.update(p, value_forward=0, value_backward=0)

    out = {"TRPO": {}, "PPO": {}}
    seconds = {"TRPO": [], "PPO": []}
    for i in range(repeats + 1):
        for name, fn in (("TRPO", trpo_update), ("PPO", ppo_update)):
            counts = {}
            start = time.perf_counter()
            fn(counts)
            if i == 0:
                out[name] = counts   # the first run is counted; the others are timed
            else:
                seconds[name].append(time.perf_counter() - start)
    for name in out:
        out[name]["seconds"] = float(np.median(seconds[name]))
    return out


# ---------------------------------------------------------------------------------------------
# What one update computes: RLHF-PPO against DPO, counted (chapter 5, section 5.8)
# ---------------------------------------------------------------------------------------------

ROLES = ("policy", "value head", "reference", "reward model")
WORK_KEYS = ("forward", "backward", "decode_steps", "tokens_decoded")


NETWORKS = ("policy", "reference", "reward model")   # the value head is a head on the policy's trunk


def networks_run(per_update: dict) -> list[str]:
    """The networks an update runs (``NETWORKS``), from ``update_work``'s per-update counts of one
    method: a role that makes a forward pass or a decoding step; the value head (65 parameters on
    the policy's trunk, ``rlhf.PolicyWithValue``) belongs to the policy, not a network of its own."""
    ran = {role for role, c in per_update.items() if c["forward"] + c["decode_steps"] > 0}
    return [n for n in NETWORKS if n in ran or (n == "policy" and "value head" in ran)]


def passes_per_update(per_update: dict) -> float:
    """Forward plus backward passes of one update, over every role (value head included)."""
    return float(sum(c["forward"] + c["backward"] for c in per_update.values()))


def work_per_progress(passes: float, updates: int, gain: float) -> float:
    """Forward and backward passes of a whole run, ``passes`` per update times ``updates``, per unit of
    progress ``gain`` (nats of KL to pi_ref, or the rise of the true reward r*); inf if no progress."""
    updates = check_positive_int("updates", updates)
    gain = float(gain)
    return passes * updates / gain if gain > 0 else float("inf")


@contextlib.contextmanager
def count_passes(ref, reward_model=None):
    """Count what each network computes inside a ``with`` block, by role; yields the counts as they fill.

    The counts are a dict role -> {``forward``, ``backward``, ``decode_steps``, ``tokens_decoded``,
    ``networks``, ``parameters``} for the roles of ``ROLES``. A call of ``ref`` is the reference's and a
    call of ``reward_model`` the reward model's; any other ``transformers`` language model called outside
    those is the policy, and an ``nn.Linear`` called outside all of them is a value head (as in
    ``rlhf.PolicyWithValue``). Calls nested inside a counted one belong to it. A pass that runs each
    prompt once for several responses (``lm.group_response_logits``) counts as one forward: its
    prompt half (the model's body on the prompts, then its output layer on their last states) is not
    counted apart.

    * ``decode_steps``: policy calls that return the logits of one position per row, the steps of
      autoregressive sampling (``lm.sample``: the prompt's pass, then one pass per new token, each
      waiting for the token before it); ``tokens_decoded`` sums their rows (one new token each);
    * ``forward``: every other call, one pass over whole sequences;
    * ``backward``: a gradient reaching a counted call's output (one backward pass through it);
    * ``networks`` and ``parameters``: the distinct modules called in that role, and their size.
    """
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
    from transformers import PreTrainedModel

    check_model("ref", ref)
    if reward_model is not None:
        check_model("reward_model", reward_model)

    counts = {role: dict.fromkeys(WORK_KEYS + ("networks", "parameters"), 0) for role in ROLES}
    seen, stack = [], []
    parts = {id(m) for net in (ref, reward_model) if net is not None for m in net.modules() if m is not net}

    def role_of(module):
        if any(role for _, role in stack):
            return None                            # inside a network already counted
        if module is ref:
            return "reference"
        if reward_model is not None and module is reward_model:
            return "reward model"
        if id(module) in parts:
            return None                            # a part of a network called on its own: a prompt half
        if isinstance(module, PreTrainedModel):
            if module.get_output_embeddings() is None:
                return None                        # a language model's body alone: a prompt half
            parts.update(id(m) for m in module.modules() if m is not module)
            return "policy"
        return "value head" if isinstance(module, torch.nn.Linear) else None

    def bump(role, key, n=1):
        counts[role][key] += n

    def pre(module, inputs):
        stack.append((module, role_of(module)))

    def post(module, inputs, output):
        _, role = stack.pop()
        if role is None:
            return
        if not any(m is module for m in seen):
            seen.append(module)
            bump(role, "networks")
            bump(role, "parameters", sum(p.numel() for p in module.parameters()))
        out = getattr(output, "logits", output)
        if role == "policy" and torch.is_tensor(out) and out.dim() == 3 and out.shape[1] == 1:
            bump(role, "decode_steps")
            bump(role, "tokens_decoded", out.shape[0])
        else:
            bump(role, "forward")
        if torch.is_tensor(out) and out.requires_grad:
            out.register_hook(lambda grad: bump(role, "backward"))

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, always_call=True)]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _work_per_update(run, ref, reward_model, n_updates: int) -> tuple[dict, dict]:
    """(per update, once) from ``run(k)`` for k = 1 and 1 + n_updates: the difference over n_updates, and
    the forward and backward passes of the 1-update run beyond it (decoding varies from update to update)."""
    with count_passes(ref, reward_model) as one:
        run(1)
    with count_passes(ref, reward_model) as more:
        run(1 + n_updates)
    per = {role: {k: (more[role][k] - one[role][k]) / n_updates for k in WORK_KEYS} for role in ROLES}
    for role in ROLES:
        per[role]["networks"], per[role]["parameters"] = more[role]["networks"], more[role]["parameters"]
    once = {role: {k: one[role][k] - per[role][k] for k in ("forward", "backward")} for role in ROLES}
    return per, once


def update_work(prepared, data: dict, *, n_updates: int = 2, ppo_config=None,
                dpo_config: dpo.DPOConfig | None = None) -> dict:
    """What one update of RLHF-PPO and one of DPO compute, counted by ``count_passes`` on real runs.

    RLHF-PPO is ``rlhf.train(prepared)`` (``ppo_config``: an ``rlhf.RLHFConfig``, default its
    defaults); DPO is ``dpo.train(pairs, ref=prepared.sft)`` on the first ``batch_size`` x k pairs of
    ``data``, one epoch (``dpo_config``, default ``dpo.DPOConfig()``), so k updates. Each runs for 1 and for
    1 + ``n_updates`` updates, same seed; the difference divided by ``n_updates`` is the work of one
    update, and the forward and backward passes of the 1-update run beyond it are done once per run
    (DPO's reference log-probabilities of the pairs, 512 pairs per pass). Returns
    {"RLHF-PPO": {"per_update": ..., "once": ...}, "DPO": {...}}, each a dict role -> counts
    (``count_passes``'s keys; ``networks`` and ``parameters`` from the longer run).
    """
    from . import rlhf

    n = check_pairs(data)
    n_updates = check_positive_int("n_updates", n_updates)
    ppo_cfg = make_config(rlhf.RLHFConfig, ppo_config)
    dpo_cfg = make_config(dpo.DPOConfig, dpo_config, epochs=1, eval_every=None)
    if dpo_cfg.batch_size * (1 + n_updates) > n:
        raise ValueError(f"data must hold at least batch_size x (1 + n_updates) = "
                         f"{dpo_cfg.batch_size * (1 + n_updates)} pairs, got {n}")

    def ppo_run(k):
        rlhf.train(prepared, ppo_cfg, steps=k)

    def dpo_run(k):
        dpo.train({key: v[:k * dpo_cfg.batch_size] for key, v in data.items()}, dpo_cfg, ref=prepared.sft)

    out = {}
    for method, run in (("RLHF-PPO", ppo_run), ("DPO", dpo_run)):
        per, once = _work_per_update(run, prepared.sft, prepared.reward_model, n_updates)
        out[method] = {"per_update": per, "once": once}
    return out
