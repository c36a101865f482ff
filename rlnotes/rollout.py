"""Rollouts over gymnasium vector environments, and the configuration shared by the control trainers.

Gymnasium 1.x resets a finished sub-environment on the *next* step by default, which hands
the learner a dummy transition. ``Runner`` asks for ``AutoresetMode.SAME_STEP`` instead: the
observation returned with ``terminated``/``truncated`` is already the first one of the next
episode and the last one is in ``info["final_obs"]``, so every stored transition is real.
Episode returns come from gymnasium's own ``RecordEpisodeStatistics`` wrapper.

What an environment returns is checked where it enters: gymnasium's API (``reset`` gives
``(observation, info)``, ``step`` five values), one number per reward, bool ``terminated`` and
``truncated``, an ``info`` dict and the observation's shape by a wrapper put directly around each environment, inside gymnasium's own wrappers (which
would fail on them with an unpacking or broadcasting error); finiteness, after the cast to the
float32 that rlnotes stores, by ``Runner`` once per step for all environments together.
"""

from __future__ import annotations

import functools
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .trainer import Config, History, check_bool
from .utils import check_in_range, check_positive_int, check_seed

if TYPE_CHECKING:  # gymnasium is imported where environments are made, so the LM side never loads it
    import gymnasium


# gymnasium 1.1 to 1.3 drop the first step of every episode after an autoreset from the
# returns that the vector RecordEpisodeStatistics wrapper reports in same-step mode.
GYMNASIUM_MIN = (1, 4)


MAX_ENVS = 4096  # environments in one synchronous vector env; 10**5 take half a minute to build
MAX_HIDDEN = 8192  # the width of the control networks' hidden layers (8192**2 float32 weights: 256 MiB)
MAX_BATCH_STEPS = 2**22  # environment steps in one batch, all held in memory


def make_envs(env_id: str, num_envs: int, seed: int, **env_kwargs) -> gymnasium.vector.VectorEnv:
    """Synchronous vector environments with same-step autoreset and episode statistics.

    ``env_kwargs`` go to ``gymnasium.make_vec`` (for example ``max_episode_steps``). Raises
    ``ValueError`` if the action space is not ``Discrete`` (the policies here are categorical);
    a ``Discrete(n, start=s)`` space is fine: ``Runner`` sends the environment ``s + a`` for the
    policy's action index ``a``. Each environment's ``reset`` and ``step`` are checked against
    gymnasium's API (``check_returns``). ``env_id`` must be a string, ``seed`` a seed (``check_seed``).
    """
    import gymnasium as gym  # here, not at the top: the language-model chapters never load gymnasium

    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a gymnasium id such as 'CartPole-v1', got {env_id!r}")
    num_envs, seed = check_positive_int("num_envs", num_envs), check_seed("seed", seed)
    if tuple(int(part) for part in gym.__version__.split(".")[:2]) < GYMNASIUM_MIN:
        raise ImportError(f"rlnotes needs gymnasium >= {'.'.join(map(str, GYMNASIUM_MIN))}, found {gym.__version__}: "
                          "before 1.4, RecordEpisodeStatistics miscounts episodes under same-step autoreset "
                          "(pip install -U gymnasium)")
    if num_envs > MAX_ENVS:
        raise ValueError(f"num_envs must be <= {MAX_ENVS} (one process steps them one after another), "
                         f"got {num_envs}")
    try:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}, **env_kwargs)
    except gym.error.Error as error:   # an id gymnasium does not know (NameNotFound, VersionNotFound, ...)
        raise ValueError(f"env_id must be a registered gymnasium environment such as 'CartPole-v1', got {env_id!r} "
                         f"({error})") from None
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        space = envs.single_action_space
        envs.close()
        raise ValueError(f"env_id {env_id!r} has action space {space}; rlnotes' policies need a "
                         "Discrete action space (use a discrete-action environment such as CartPole-v1)")
    if not isinstance(envs.single_observation_space, gym.spaces.Box) or len(envs.single_observation_space.shape) != 1:
        space = envs.single_observation_space
        envs.close()
        raise ValueError(f"env_id {env_id!r} has observation space {space}; a flat Box is needed")
    for i, env in enumerate(envs.envs):  # the checks go inside gymnasium's wrappers, which unpack step()
        if not isinstance(env, gym.Wrapper):
            envs.envs[i] = check_returns(env, env_id, i)
            continue
        while isinstance(env.env, gym.Wrapper):
            env = env.env
        env.env = check_returns(env.env, env_id, i)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.action_space.seed(seed)
    return envs


def check_returns(env: gymnasium.Env, env_id: str, index: int) -> gymnasium.Wrapper:
    """``env`` wrapped so that its ``reset`` and ``step`` raise an error naming ``env_id``, the
    sub-environment ``index`` and the call unless they return what gymnasium's API expects:
    ``reset`` a tuple ``(observation, info)``, ``step`` a tuple of five ``(observation, reward,
    terminated, truncated, info)`` (the old gym API's observation alone and four values are
    refused, ``TypeError`` and ``ValueError``), one number per reward (``TypeError``), ``terminated``
    and ``truncated`` bools (Python's or NumPy's, ``TypeError``), an ``info`` dict (``TypeError``),
    and an observation of the observation space's shape (``ValueError``)."""
    return _return_checks()(env, env_id, index)


@functools.cache
def _return_checks():
    import gymnasium as gym

    class ReturnChecks(gym.Wrapper):
        """``check_returns``' wrapper; it counts the environment's steps to name the one that failed."""

        def __init__(self, env, env_id: str, index: int):
            super().__init__(env)
            self.where, self.t = f"environment {env_id!r} (sub-environment {index})", 0
            self.shape = env.observation_space.shape

        @property
        def spec(self):  # left out of the spec: gym.make(env.spec) makes the environment as registered
            return self.env.spec

        def reset(self, **kwargs):
            result = self.env.reset(**kwargs)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError(f"{self.where}: reset() returned {reprlib.repr(result)}; gymnasium's API expects a "
                                "tuple (observation, info dict), not the old gym API's observation alone")
            if not isinstance(result[1], dict):
                raise TypeError(f"{self.where}: reset() returned info={reprlib.repr(result[1])}; gymnasium's API "
                                "expects an info dict")
            self.check_observation(result[0], "reset()")
            return result

        def step(self, action):
            result = self.env.step(action)
            self.t += 1
            if not isinstance(result, tuple) or len(result) != 5:
                error, got = ((ValueError, f"{len(result)} values") if isinstance(result, tuple)
                              else (TypeError, reprlib.repr(result)))
                raise error(f"{self.where}: step() returned {got} at its step {self.t}; gymnasium's API expects a "
                            "tuple of 5, (observation, reward, terminated, truncated, info), not the old gym API's 4 "
                            "(..., done, info)")
            if not _is_number(result[1]):
                raise TypeError(f"{self.where}: step() returned the reward {reprlib.repr(result[1])} at its step "
                                f"{self.t}; gymnasium's API expects one number per step (a float or an int)")
            for i, name in ((2, "terminated"), (3, "truncated")):
                if not isinstance(result[i], (bool, np.bool_)):
                    raise TypeError(f"{self.where}: step() returned {name}={reprlib.repr(result[i])} at its step "
                                    f"{self.t}; gymnasium's API expects a bool (True or False, or a numpy.bool_)")
            if not isinstance(result[4], dict):
                raise TypeError(f"{self.where}: step() returned info={reprlib.repr(result[4])} at its step {self.t}; "
                                "gymnasium's API expects an info dict")
            self.check_observation(result[0], f"step() at its step {self.t}")
            return result

        def check_observation(self, obs, call: str) -> None:
            shape = obs.shape if isinstance(obs, np.ndarray) else np.shape(obs)
            if shape != self.shape:
                raise ValueError(f"{self.where}: {call} returned an observation of shape {shape}; its observation "
                                 f"space {self.observation_space} holds observations of shape {self.shape}")

    return ReturnChecks


def _is_number(x) -> bool:
    """Whether ``x`` is one real number: a Python or NumPy int, float or bool (as gymnasium takes them)."""
    return type(x) is float or type(x) is int or (np.ndim(x) == 0 and np.asarray(x).dtype.kind in "biuf")


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
    A reward or an observation (first, last or any other) that is not finite as a float32 raises
    ``ValueError`` naming the environment, the sub-environments and the step; the environments
    are closed if the first ``reset`` fails (a trainer closes them on any later error).
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, gamma: float, history: History,
                 **env_kwargs):
        self.gamma, seed = check_in_range("gamma", gamma, 0.0, 1.0), check_seed("seed", seed)
        if not isinstance(history, History):
            raise TypeError(f"history must be an rlnotes.trainer.History, got {type(history).__name__}")
        self.history, self.steps, self.env_id = history, 0, env_id
        self.envs = make_envs(env_id, num_envs, seed, **env_kwargs)
        self.obs_dim = self.envs.single_observation_space.shape[0]
        self.n_actions = int(self.envs.single_action_space.n)
        self.action_start = int(self.envs.single_action_space.start)  # Discrete(n, start=s): actions s..s+n-1
        try:
            obs, _ = self.envs.reset(seed=seed)
            self._check_finite("observation", obs, when="from reset()")
        except BaseException:
            self.envs.close()
            raise
        self.obs = torch.as_tensor(obs, dtype=torch.float32)

    @torch.no_grad()
    def rollout(self, policy, value_fn, num_steps: int) -> Rollout:
        """Step ``num_steps`` times with actions a_t ~ ``policy(obs)`` (a distribution) and values ``value_fn(obs)``.

        A policy with an ``act(obs) -> (actions, log-probs, values)`` method is called once per step instead.
        """
        T, N = check_positive_int("num_steps", num_steps), self.envs.num_envs
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
            r, raw = r.astype(np.float32), r
            self._check_finite("reward", r, raw)
            self._check_finite("observation", next_obs)
            ended, cut = term | trunc, trunc & ~term
            if ended.any():
                finals = np.stack(info["final_obs"][ended])
                self._check_finite("final observation (info['final_obs'])", finals, envs=np.nonzero(ended)[0])
                if cut.any():
                    final = torch.as_tensor(finals[cut[ended]], dtype=torch.float32)
                    r[cut] += self.gamma * value_fn(final).numpy()
            rewards[t], dones[t] = r, ended
            if "_episode" in info:
                for i in np.nonzero(info["_episode"])[0]:
                    self.history.add_episode(self.steps, info["episode"]["r"][i])
            self.obs = torch.as_tensor(next_obs, dtype=torch.float32)
        return Rollout(*map(torch.from_numpy, (obs, actions, logp, rewards, dones, values)), value_fn(self.obs))

    def _check_finite(self, what: str, values: np.ndarray, raw=None, envs=None, when=None) -> None:
        """Raise unless ``values`` (one row per sub-environment; ``envs``: their indices, if not all)
        are finite as the float32 that rlnotes stores. The message shows what the environments
        returned, ``raw`` (if not ``values``): all the rewards, or the first bad observation; and
        ``when``, by default the environment step."""
        stored = np.asarray(values, dtype=np.float32)  # no copy: the observations are float32 already
        if np.isfinite(stored).all():
            return
        raw = values if raw is None else raw
        rows = np.nonzero(~np.isfinite(stored.reshape(len(stored), -1)).all(1))[0]
        overflow = np.isfinite(np.asarray(raw[rows], dtype=float)).all()
        envs = rows if envs is None else envs[rows]
        problem = f"{what} too large for float32" if overflow else f"non-finite {what}"
        need = ("rlnotes stores rewards and observations as float32, finite up to about 3.4e38" if overflow
                else "rlnotes' trainers need finite rewards and observations")
        raise ValueError(f"environment {self.env_id!r} returned a {problem} ({raw if raw.ndim == 1 else raw[rows[0]]}) "
                         f"{when or f'at environment step {self.steps}'} (sub-environment{'s' * (len(envs) > 1)} {', '.join(map(str, envs))}): {need}")

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
        self.check("seed", check_seed)
        self.check("gamma", check_in_range, 0.0, 1.0)
        self.check("lam", check_in_range, 0.0, 1.0)
        self.check("normalize_advantages", check_bool)
        self.check("progress", check_bool)
        for name, most in (("num_envs", MAX_ENVS), ("hidden", MAX_HIDDEN), ("num_steps", MAX_BATCH_STEPS)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be <= {most}, got {getattr(self, name)}")
        if self.batch_steps > MAX_BATCH_STEPS:
            raise ValueError(f"num_envs * num_steps (the steps of one batch, held in memory) must be <= "
                             f"{MAX_BATCH_STEPS}, got {self.num_envs} * {self.num_steps}")
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
