"""rlnotes PPO against Stable-Baselines3 PPO on CartPole-v1, in one run, on the same seeds.

Usage: ``python bench/ppo_cartpole.py [--seeds 0 1 2 3 4] [--total-steps 100000]``
(needs ``pip install -r bench/requirements.txt``; SB3 is never needed by the book or the tests).

What is the same on both sides (and the three hyperparameters that are not)
- SB3 runs RL Baselines3 Zoo's tuned PPO for CartPole-v1 (8 envs, n_steps 32, batch 256,
  gae_lambda 0.8, gamma 0.98, 20 epochs, ent_coef 0, learning rate 1e-3 and clip range 0.2 both
  decayed linearly to 0 over 1e5 steps, vf_coef 0.5, max_grad_norm 0.5, Adam eps 1e-5; SB3's vf_coef 0.5
  on the plain squared error is rlnotes' default vf_coef 1 on the half squared error).
  rlnotes runs ``rlnotes.ppo.train`` at its defaults, which are the same values except three:
  8 x 64 = 512 steps per batch, 2 minibatches of 256 for 15 epochs, learning rate 2e-3 (30 Adam
  steps per 512 env steps instead of Zoo's 40). ``--zoo`` runs rlnotes with Zoo's values too.
- Networks: separate 64-64 tanh MLPs for policy and value, orthogonal initialisation (gain
  sqrt(2), 0.01 for the policy head, 1 for the value head), one Adam over both.
- Truncation at 500 steps bootstraps with gamma * V(final observation) on both sides.
- Measurement: every finished episode's undiscounted return is recorded with the env-step count
  at which it finished (SB3: its ``Monitor`` wrapper's ``info["episode"]`` read by a callback;
  rlnotes: gymnasium's ``RecordEpisodeStatistics``), both into an ``rlnotes.trainer.History``,
  and "steps to 475" is ``History.steps_to_reach(475)``: the first step at which the mean of
  the last 20 returns is >= 475. Both stop as soon as that happens (SB3 through the callback,
  rlnotes at the end of that iteration, ``stop_return=475``); the schedules still decay over
  1e5 steps. Steps per second = env steps done / wall-clock seconds of the training call
  (SB3: ``model.learn``; rlnotes: ``train``, which also builds its environments and networks);
  also printed per CPU second of the process (``time.process_time``), which other jobs on
  shared cores disturb less than wall-clock time.
- Same process, same torch thread setting (1 thread: the networks are tiny and the 2 cores are
  shared; run with ``--threads 2`` to compare with two), CPU, alternating which side runs
  first per seed so that background load hits both alike, after a short untimed warm-up of each
  (one-time imports, e.g. the optimiser's first construction). The printed ratios are the robust part.

What differs
- The seeds are the same integers but drive different random streams (network initialisation,
  action sampling, environment resets), so per-seed results are not paired; compare medians.
- SB3 steps ``DummyVecEnv`` (next-step autoreset) with ``Monitor``; rlnotes steps gymnasium's
  ``SyncVectorEnv`` with same-step autoreset. Both see the same CartPole-v1 dynamics.
- Learning-rate / clip schedules: SB3 evaluates them after each rollout (progress remaining =
  1 - steps so far / total, counting that rollout); rlnotes before it (one batch apart).
- Both normalise advantages per minibatch of 256 (SB3's whole batch; half of rlnotes' batch).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import torch

from sb3_record import episode_recorder
from rlnotes import ppo

TARGET = 475.0
ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
           learning_rate=1e-3, clip_range=0.2)


def run_rlnotes(seed: int, total_steps: int, zoo: bool = False) -> tuple[float, float, float]:
    """(steps to reach TARGET, env steps per wall-clock second, per CPU second) of rlnotes.ppo.train."""
    kwargs = {}
    if zoo:
        kwargs = dict(num_envs=ZOO["n_envs"], num_steps=ZOO["n_steps"], minibatch_size=ZOO["batch_size"],
                      lam=ZOO["gae_lambda"], gamma=ZOO["gamma"], epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"],
                      lr=ZOO["learning_rate"], eps=ZOO["clip_range"])
    start, cpu = time.perf_counter(), time.process_time()
    history = ppo.train("CartPole-v1", total_steps=total_steps, seed=seed, stop_return=TARGET, **kwargs).history
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = history.update_array("env_steps")[-1]
    return history.steps_to_reach(TARGET), steps / seconds, steps / cpu


def run_sb3(seed: int, total_steps: int) -> tuple[float, float, float]:
    """(steps to reach TARGET, env steps per wall-clock second, per CPU second) of SB3's PPO."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    def linear(value):
        return lambda progress_remaining: progress_remaining * value

    env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed, vec_env_cls=DummyVecEnv)
    model = PPO("MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"],
                gae_lambda=ZOO["gae_lambda"], gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"],
                ent_coef=ZOO["ent_coef"], learning_rate=linear(ZOO["learning_rate"]),
                clip_range=linear(ZOO["clip_range"]), seed=seed, device="cpu", verbose=0)
    record = episode_recorder(TARGET)
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(total_steps, callback=record)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    env.close()
    return record.history.steps_to_reach(TARGET), model.num_timesteps / seconds, model.num_timesteps / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--zoo", action="store_true", help="run rlnotes with Zoo's hyperparameters too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"rlnotes": [], "sb3": []}
    runners = {"rlnotes": functools.partial(run_rlnotes, zoo=args.zoo), "sb3": run_sb3}
    for run in runners.values():  # warm-up: one-time imports and initialisation are not timed
        run(0, 1024)
    for k, seed in enumerate(args.seeds):
        order = ["rlnotes", "sb3"] if k % 2 == 0 else ["sb3", "rlnotes"]
        for name in order:
            steps, fps, cps = runners[name](seed, args.total_steps)
            results[name].append((steps, fps, cps))
            print(f"seed {seed}  {name:8s} steps to {TARGET:.0f}: {steps:>8.0f}   env steps/s: {fps:7.0f} wall-clock, "
                  f"{cps:7.0f} CPU", flush=True)
    print(f"\nmedian over seeds {args.seeds} (torch threads: {args.threads})")
    med = {}
    for name, rows in results.items():
        med[name] = [statistics.median(r[k] for r in rows) for k in range(3)]
        print(f"  {name:8s} steps to {TARGET:.0f}: {med[name][0]:8.0f}   env steps/s: {med[name][1]:7.0f} wall-clock, "
              f"{med[name][2]:7.0f} CPU")
    per_seed = [a[1] / b[1] for a, b in zip(results["rlnotes"], results["sb3"])]
    print(f"ratio steps to {TARGET:.0f}, rlnotes / SB3: {med['rlnotes'][0] / med['sb3'][0]:.2f}  (target <= 1)")
    print(f"ratio env steps/s, rlnotes / SB3:     {med['rlnotes'][1] / med['sb3'][1]:.2f} wall-clock (target >= 2; "
          f"per seed: {', '.join(f'{x:.2f}' for x in per_seed)}), {med['rlnotes'][2] / med['sb3'][2]:.2f} CPU time")
    print("(reached: rlnotes {}/{}, SB3 {}/{})".format(
        sum(np.isfinite(r[0]) for r in results["rlnotes"]), len(args.seeds),
        sum(np.isfinite(r[0]) for r in results["sb3"]), len(args.seeds)))


if __name__ == "__main__":
    main()
