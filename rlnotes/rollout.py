"""Rollouts over gymnasium vector environments, and the configuration shared by the control trainers.

Gymnasium 1.x resets a finished sub-environment on the *next* step by default, which hands
the learner a dummy transition. ``Runner`` asks for ``AutoresetMode.SAME_STEP`` instead: the
observation returned with ``terminated``/``truncated`` is already the first one of the next
episode and the last one is in ``info["final_obs"]``, so every stored transition is real.
Episode returns come from gymnasium's own ``RecordEpisodeStatistics`` wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .trainer import Config, History, check_bool
from .utils import check_in_range, check_positive_int

if TYPE_CHECKING:  # gymnasium is imported where environments are made, so the LM side never loads it
    import gymnasium


# gymnasium 1.1 to 1.3 drop the first step of every episode after an autoreset from the
# returns that the vector RecordEpisodeStatistics wrapper reports in same-step mode.
GYMNASIUM_MIN = (1, 4)


def make_envs(env_id: str, num_envs: int, seed: int, **env_kwargs) -> gymnasium.vector.VectorEnv:
    """Synchronous vector environments with same-step autoreset and episode statistics.

    ``env_kwargs`` go to ``gymnasium.make_vec`` (for example ``max_episode_steps``). Raises
    ``ValueError`` if the action space is not ``Discrete`` (the policies here are categorical);
    a ``Discrete(n, start=s)`` space is fine: ``Runner`` sends the environment ``s + a`` for the
    policy's action index ``a``.
    """
    import gymnasium as gym  # here, not at the top: the language-model chapters never load gymnasium

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

    @staticmethod
    def flat(*tensors: torch.Tensor) -> list[torch.Tensor]:
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
        self.env_id = env_id
        self.action_start = int(self.envs.single_action_space.start)  # Discrete(n, start=s): actions s..s+n-1
        obs, _ = self.envs.reset(seed=seed)
        self._check_finite("observation", obs)
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
            next_obs, r, term, trunc, info = self.envs.step(a.numpy() + self.action_start)
            self.steps += N
            self._check_finite("reward", r)
            self._check_finite("observation", next_obs)
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

    def _check_finite(self, what: str, values) -> None:
        values = np.asarray(values, dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"environment {self.env_id!r} returned a non-finite {what} ({values.ravel()[:8]}) "
                             f"at environment step {self.steps}: rlnotes' trainers need finite rewards and observations")

    def close(self):
        self.envs.close()


@dataclass(frozen=True, kw_only=True)
class ControlConfig(Config):
    """The arguments every control trainer (chapters 1-3) shares, checked once.

    ``total_steps`` environment steps in all, collected in batches of ``num_envs * num_steps``;
    GAE(``gamma``, ``lam``) advantages, normalised per batch if ``normalize_advantages``;
    networks of two hidden layers of width ``hidden``; ``progress`` shows a progress bar.
    """

    total_steps: int
    seed: int
    num_envs: int = 8
    num_steps: int = 64
    gamma: float = 0.99
    lam: float = 1.0
    hidden: int = 64
    normalize_advantages: bool = True
    progress: bool = False

    def __post_init__(self):
        for name in ("total_steps", "num_envs", "num_steps", "hidden"):
            self.check(name, check_positive_int)
        self.check("seed", check_positive_int, 0)
        self.check("gamma", check_in_range, 0.0, 1.0)
        self.check("lam", check_in_range, 0.0, 1.0)
        self.check("normalize_advantages", check_bool)
        self.check("progress", check_bool)
        if self.normalize_advantages and self.num_envs * self.num_steps < 2:
            raise ValueError("num_envs * num_steps must be >= 2 to normalise advantages per batch "
                             f"(got {self.num_envs} * {self.num_steps}); or pass normalize_advantages=False")

    @property
    def batch_steps(self) -> int:
        """Environment steps per update, num_envs * num_steps."""
        return self.num_envs * self.num_steps

    @property
    def updates(self) -> int:
        """The number of updates: ceil(total_steps / batch_steps)."""
        return -(-self.total_steps // self.batch_steps)
