"""Chapter 2 benchmark: rlnotes TRPO against sb3-contrib's TRPO on CartPole-v1, same seeds.

For each seed both learners train within the same budget of environment steps; reported:
- env steps until the mean return of the last 20 episodes first reaches 475 (inf if never),
- env steps per second of wall-clock time and per second of this process's CPU time (rollouts and
  updates together; the CPU rate is steadier on a machine shared with other work).

rlnotes runs ``rlnotes.trpo.train`` at its defaults (8 envs x 64 steps per update, delta 0.01,
10 CG iterations, damping 0.1, GAE lambda 0.98, 20 value steps per update). sb3-contrib runs
RL Zoo's tuned CartPole-v1 TRPO hyperparameters (hyperparams/trpo.yml in rl-baselines3-zoo:
2 envs, n_steps 512, batch_size 512, cg_damping 1e-3, gae_lambda 0.98, gamma 0.99,
learning_rate 1e-3, n_critic_updates 20; the rest at sb3-contrib's defaults: target_kl 0.01,
cg_max_steps 15, line search 10 x 0.8). sb3 stops once it reaches the threshold (the steps after
it would not change the figure); rlnotes runs its whole budget, as ``train`` has no early stop.
Both run with ``torch.set_num_threads(1)``: on 2 shared cores, small networks are faster (and
timings far steadier) without intra-op threads.

Usage: .venv/bin/python bench/trpo_cartpole.py [--seeds 0 1 2 3 4] [--total-steps 100000]
Needs the peers of bench/requirements.txt (sb3-contrib); without them only rlnotes runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sb3_record import episode_recorder
from rlnotes import trpo

THRESHOLD, WINDOW = 475.0, 20
RL_ZOO_CARTPOLE = dict(n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98, gamma=0.99,
                       learning_rate=1e-3, n_critic_updates=20)
RL_ZOO_N_ENVS = 2


def run_rlnotes(seed: int, total_steps: int) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    history = trpo.train("CartPole-v1", total_steps=total_steps, seed=seed).history
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = int(history.update_array("env_steps")[-1])
    return dict(steps_to_475=history.steps_to_reach(THRESHOLD, WINDOW), env_steps=steps, seconds=seconds,
                steps_per_s=steps / seconds, steps_per_cpu_s=steps / cpu, final_return=history.final_mean_return(WINDOW))


def run_sb3(seed: int, total_steps: int) -> dict:
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env

    start, cpu = time.perf_counter(), time.process_time()
    env = make_vec_env("CartPole-v1", n_envs=RL_ZOO_N_ENVS, seed=seed)
    model = TRPO("MlpPolicy", env, seed=seed, device="cpu", **RL_ZOO_CARTPOLE)
    record = episode_recorder(THRESHOLD, WINDOW)
    model.learn(total_steps, callback=record)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    env.close()
    h, steps = record.history, int(model.num_timesteps)
    return dict(steps_to_475=h.steps_to_reach(THRESHOLD, WINDOW), env_steps=steps, seconds=seconds,
                steps_per_s=steps / seconds, steps_per_cpu_s=steps / cpu, final_return=h.final_mean_return(WINDOW))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--total-steps", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import sb3_contrib  # noqa: F401
        learners = {"rlnotes": run_rlnotes, "sb3": run_sb3}
    except ImportError:
        print("sb3-contrib is not installed: running rlnotes only (pip install -r bench/requirements.txt)")
        learners = {"rlnotes": run_rlnotes}

    results = {name: {} for name in learners}
    print(f"CartPole-v1, budget {args.total_steps} env steps, seeds {args.seeds}, threshold {THRESHOLD} "
          f"(mean of the last {WINDOW} episodes)")
    header = "seed " + "".join(f"| {name:>7} steps to 475 | {name:>7} steps/s | {name:>7} steps/CPU s "
                               for name in learners)
    print(header)
    for seed in args.seeds:
        row = f"{seed:4d} "
        for name, run in learners.items():
            r = results[name][seed] = run(seed, args.total_steps)
            row += f"| {r['steps_to_475']:>21,.0f} | {r['steps_per_s']:>15,.0f} | {r['steps_per_cpu_s']:>19,.0f} "
        print(row, flush=True)

    summary = {}
    for name in learners:
        rs = results[name].values()
        to_475 = [r["steps_to_475"] for r in rs]
        summary[name] = dict(median_steps_to_475=float(np.median(to_475)),
                             solved=int(np.isfinite(to_475).sum()),
                             median_steps_per_s=float(np.median([r["steps_per_s"] for r in rs])),
                             median_steps_per_cpu_s=float(np.median([r["steps_per_cpu_s"] for r in rs])))
        s = summary[name]
        print(f"{name:>8}: median steps to 475 = {s['median_steps_to_475']:,.0f} "
              f"({s['solved']}/{len(args.seeds)} seeds reach it), median env steps/s = {s['median_steps_per_s']:,.0f}, "
              f"per CPU second = {s['median_steps_per_cpu_s']:,.0f}")
    if "sb3" in summary:
        ours, peer = summary["rlnotes"], summary["sb3"]
        print(f"ratio steps to 475, sb3 / rlnotes = {peer['median_steps_to_475'] / ours['median_steps_to_475']:.2f} "
              "(> 1: rlnotes needs fewer env steps)")
        paired = [results["rlnotes"][seed]["steps_per_s"] / results["sb3"][seed]["steps_per_s"] for seed in args.seeds]
        summary["ratios"] = dict(steps_to_475_sb3_over_rlnotes=peer["median_steps_to_475"] / ours["median_steps_to_475"],
                                 steps_per_s_rlnotes_over_sb3=ours["median_steps_per_s"] / peer["median_steps_per_s"],
                                 steps_per_s_paired_median=float(np.median(paired)),
                                 steps_per_cpu_s_rlnotes_over_sb3=ours["median_steps_per_cpu_s"] / peer["median_steps_per_cpu_s"])
        print(f"ratio env steps/s, rlnotes / sb3 = {ours['median_steps_per_s'] / peer['median_steps_per_s']:.2f} "
              f"(> 1: rlnotes is faster); per seed, run back to back: {np.round(paired, 2).tolist()}, "
              f"median {np.median(paired):.2f}")
        print(f"ratio env steps per CPU second, rlnotes / sb3 = {summary['ratios']['steps_per_cpu_s_rlnotes_over_sb3']:.2f}")
    out = Path(__file__).parent / "results" / "trpo_cartpole.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), results=results, summary=summary), indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
