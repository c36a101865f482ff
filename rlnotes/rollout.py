"""Rollouts over gymnasium vector environments, and the ``History`` every trainer returns.

Gymnasium 1.x resets a finished sub-environment on the *next* step by default, which hands
the learner a dummy transition. ``Runner`` asks for ``AutoresetMode.SAME_STEP`` instead: the
observation returned with ``terminated``/``truncated`` is already the first one of the next
episode and the last one is in ``info["final_obs"]``, so every stored transition is real.
Episode returns come from gymnasium's own ``RecordEpisodeStatistics`` wrapper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from .utils import check_in_range, check_positive_int


@dataclass
class History:
    """What a training run produced.

    ``env_steps`` and ``episode_returns`` have one entry per finished episode: the total number
    of environment steps when it finished, and its undiscounted return. ``updates`` maps a
    metric name (``"kl"``, ``"entropy"``, ``"seconds"``, ...) to one value per update.
    """

    _steps: list = field(default_factory=list)
    _returns: list = field(default_factory=list)
    updates: dict = field(default_factory=dict)

    @property
    def env_steps(self) -> np.ndarray:
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def episode_returns(self) -> np.ndarray:
        return np.asarray(self._returns, dtype=float)

    def add_episode(self, env_step: int, episode_return: float) -> None:
        self._steps.append(int(env_step))
        self._returns.append(float(episode_return))

    def log(self, **metrics) -> None:
        """Append one value per metric for the current update."""
        for name, value in metrics.items():
            self.updates.setdefault(name, []).append(value.item() if torch.is_tensor(value) else float(value))

    def update_array(self, name: str) -> np.ndarray:
        return np.asarray(self.updates.get(name, []), dtype=float)

    def moving_mean(self, window: int = 20) -> np.ndarray:
        """Mean return of the last ``window`` finished episodes, after each episode."""
        r = self.episode_returns
        c = np.concatenate([[0.0], np.cumsum(r)])
        idx = np.arange(1, len(r) + 1)
        lo = np.maximum(idx - window, 0)
        return (c[idx] - c[lo]) / (idx - lo)

    def final_mean_return(self, window: int = 20) -> float:
        """Mean return of the last ``window`` finished episodes (nan if none finished)."""
        r = self.episode_returns[-window:]
        return float(r.mean()) if len(r) else float("nan")

    def steps_to_reach(self, threshold: float, window: int = 20) -> float:
        """First env step at which the mean of the last ``window`` returns is >= threshold (inf if never)."""
        m = self.moving_mean(window)
        full = np.arange(len(m)) >= window - 1
        hit = np.nonzero((m >= threshold) & full)[0]
        return float(self.env_steps[hit[0]]) if len(hit) else float("inf")

    def curve(self, grid: np.ndarray, window: int = 20) -> np.ndarray:
        """The moving mean return as a function of env steps, sampled on ``grid`` (nan before any episode)."""
        m = self.moving_mean(window)
        idx = np.searchsorted(self.env_steps, grid, side="right") - 1
        return np.where(idx >= 0, m[np.clip(idx, 0, None)] if len(m) else np.nan, np.nan)


# gymnasium 1.1 to 1.3 drop the first step of every episode after an autoreset from the
# returns that the vector RecordEpisodeStatistics wrapper reports in same-step mode.
GYMNASIUM_MIN = (1, 4)


def make_envs(env_id: str, num_envs: int, seed: int, **env_kwargs) -> gym.vector.VectorEnv:
    """Synchronous vector environments with same-step autoreset and episode statistics.

    ``env_kwargs`` go to ``gymnasium.make_vec`` (for example ``max_episode_steps``). Raises
    ``ValueError`` if the action space is not ``Discrete`` (the policies here are categorical).
    """
    num_envs = check_positive_int("num_envs", num_envs)
    if tuple(int(part) for part in gym.__version__.split(".")[:2]) < GYMNASIUM_MIN:
        raise ImportError(f"rlnotes needs gymnasium >= {'.'.join(map(str, GYMNASIUM_MIN))}, found {gym.__version__}: "
                          "before 1.4, RecordEpisodeStatistics miscounts episodes under same-step autoreset "
                          "(pip install -U gymnasium)")
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **env_kwargs)
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        space = envs.single_action_space
        envs.close()
        raise ValueError(f"env_id {env_id!r} has action space {space}; rlnotes' policies need a "
                         "Discrete action space (use a discrete-action environment such as CartPole-v1)")
    if not isinstance(envs.single_observation_space, gym.spaces.Box) or len(envs.single_observation_space.shape) != 1:
        space = envs.single_observation_space
        envs.close()
        raise ValueError(f"env_id {env_id!r} has observation space {space}; a flat Box is needed")
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    return envs


@dataclass
class Rollout:
    """One batch of experience, every tensor [T, N] (``obs`` is [T, N, obs_dim])."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    values: torch.Tensor
    last_value: torch.Tensor

    def flat(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Merge the time and environment axes: [T, N, ...] -> [T * N, ...]."""
        return [t.reshape(-1, *t.shape[2:]) for t in tensors]


class Runner:
    """Steps ``num_envs`` environments with a policy and records finished episodes in ``history``.

    A truncated (time-limited) episode did not really end, so its last reward gets
    gamma * V(final observation) added: the bootstrap that the cut-off future would have given.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, gamma: float, history: History,
                 **env_kwargs):
        self.gamma = check_in_range("gamma", gamma, 0.0, 1.0)
        self.envs = make_envs(env_id, num_envs, seed, **env_kwargs)
        self.obs_dim = self.envs.single_observation_space.shape[0]
        self.n_actions = int(self.envs.single_action_space.n)
        obs, _ = self.envs.reset(seed=seed)
        self.obs = torch.as_tensor(obs, dtype=torch.float32)
        self.history = history
        self.steps = 0

    @torch.no_grad()
    def rollout(self, policy, value_fn, num_steps: int) -> Rollout:
        """Step ``num_steps`` times with actions a_t ~ ``policy(obs)`` (a distribution) and values ``value_fn(obs)``.

        A policy with an ``act(obs) -> (actions, log-probs, values)`` method is called once per step instead.
        """
        T, N = num_steps, self.envs.num_envs
        # NumPy buffers: writing one row per step costs far less than torch's indexing does
        obs = np.zeros((T, N, self.obs_dim), dtype=np.float32)
        actions = np.zeros((T, N), dtype=np.int64)
        logp, rewards, dones, values = (np.zeros((T, N), dtype=np.float32) for _ in range(4))
        for t in range(T):
            obs[t] = self.obs
            if hasattr(policy, "act"):  # one call for a_t, log pi(a_t|s_t) and V(s_t) (rlnotes.ppo.ActorCritic)
                a, logp[t], values[t] = policy.act(self.obs)
            else:
                dist = policy(self.obs)
                a = dist.sample()
                logp[t], values[t] = dist.log_prob(a), value_fn(self.obs)
            actions[t] = a
            next_obs, r, term, trunc, info = self.envs.step(a.numpy())
            self.steps += N
            r = r.astype(np.float32)
            cut = trunc & ~term
            if cut.any():
                final = torch.as_tensor(np.stack(info["final_obs"][cut]), dtype=torch.float32)
                r[cut] += self.gamma * value_fn(final).numpy()
            rewards[t], dones[t] = r, term | trunc
            if "_episode" in info:
                for i in np.nonzero(info["_episode"])[0]:
                    self.history.add_episode(self.steps, info["episode"]["r"][i])
            self.obs = torch.as_tensor(next_obs, dtype=torch.float32)
        return Rollout(*map(torch.from_numpy, (obs, actions, logp, rewards, dones, values)), value_fn(self.obs))

    def close(self):
        self.envs.close()


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
