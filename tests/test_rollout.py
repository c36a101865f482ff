"""rlnotes.rollout: the vectorised environments, the runner and its batches; what an environment
returns (NaN rewards and observations refused, naming the environment and the step; a
Discrete(n, start) space gets actions in its own range), checked through every control trainer."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from rlnotes import pg, ppo, rollout, trpo
from rlnotes.kl import mean_kl
from rlnotes.nets import CategoricalPolicy, ValueNet
from rlnotes.rollout import ControlConfig, Runner, make_envs
from rlnotes.trainer import History


class Always:
    """A policy that always takes ``action``: makes a rollout comparable with hand stepping."""

    def __init__(self, action, n_actions=2):
        self.action, self.n = action, n_actions

    def __call__(self, obs):
        logits = torch.full((len(obs), self.n), -1e9)
        logits[:, self.action] = 0.0
        return Categorical(logits=logits)


def constant_value(c):
    return lambda obs: torch.full((len(obs),), float(c))


def test_rollout_matches_hand_stepped_environments():
    seed, N, T = 3, 2, 40
    runner = Runner("CartPole-v1", N, seed, 0.99, History())
    batch = runner.rollout(Always(1), constant_value(0.0), T)
    for i in range(N):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + i)
        returns, ret = [], 0.0
        for t in range(T):
            np.testing.assert_allclose(batch.obs[t, i].numpy(), obs, rtol=1e-6)
            obs, r, term, trunc, _ = env.step(1)
            ret += r
            assert batch.dones[t, i].item() == float(term or trunc)
            if term or trunc:
                returns.append(ret)
                ret = 0.0
                obs, _ = env.reset()
        assert batch.rewards[:, i].sum().item() == pytest.approx(T)
    # every finished episode is in the history, with its return and the step it ended at
    assert len(runner.history.episode_returns) > 0
    assert runner.steps == N * T and runner.history.episode_ends.max() <= N * T


def test_truncation_bootstraps_with_value_of_final_observation():
    runner = Runner("CartPole-v1", 2, 0, 0.9, History(), max_episode_steps=5)
    batch = runner.rollout(Always(0), constant_value(10.0), 12)
    ends = batch.dones.bool()
    assert ends[4].all() and ends[9].all()
    torch.testing.assert_close(batch.rewards[ends], torch.full((int(ends.sum()),), 1.0 + 0.9 * 10.0))
    torch.testing.assert_close(batch.rewards[~ends], torch.ones(int((~ends).sum())))
    assert runner.history.episode_returns.tolist() == [5.0] * 4  # undiscounted, no bootstrap


def test_continuous_action_space_is_rejected():
    with pytest.raises(ValueError, match="Discrete"):
        make_envs("Pendulum-v1", 1, 0)


def test_history_statistics():
    h = History()
    for step, ret in zip([10, 20, 30, 40], [1.0, 3.0, 5.0, 7.0]):
        h.add_episode(step, ret)
    np.testing.assert_allclose(h.moving_mean(2), [1.0, 2.0, 4.0, 6.0])
    assert h.final_mean_return(2) == 6.0
    assert h.steps_to_reach(4.0, window=2) == 30
    assert h.steps_to_reach(100.0, window=2) == float("inf")
    np.testing.assert_allclose(h.curve(np.array([5, 25, 100]), window=2), [np.nan, 2.0, 6.0])
    h.log(kl=0.5)
    h.log(kl=torch.tensor(0.25))
    np.testing.assert_allclose(h.update_array("kl"), [0.5, 0.25])
    # keys with a slash come in a dict, plain ones as keywords, both in one call
    h.log({"kl/exact_per_state": torch.tensor(0.125)}, entropy=0.5)
    np.testing.assert_allclose(h.update_array("kl/exact_per_state"), [0.125])
    np.testing.assert_allclose(h.update_array("entropy"), [0.5])
    assert len(h) == 2  # the number of updates: the longest series
    with pytest.raises(KeyError, match="no metric 'loss' was logged; logged: .*'kl'"):
        h.update_array("loss")
    np.testing.assert_array_equal(h.episode_ends, [10, 20, 30, 40])
    assert h.episode_ends.dtype == np.int64


def test_networks_shapes_and_kl():
    policy, value = CategoricalPolicy(4, 3), ValueNet(4)
    obs = torch.randn(7, 4)
    dist = policy(obs)
    assert dist.probs.shape == (7, 3) and value(obs).shape == (7,)
    assert policy.logp(obs, torch.zeros(7, dtype=torch.long)).shape == (7,)
    assert mean_kl(dist.logits, dist.logits).item() == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(policy.log_probs(obs), dist.logits)
    # the small output gain starts the policy close to uniform
    assert (dist.probs - 1 / 3).abs().max() < 0.05


def test_an_old_gymnasium_is_refused_with_a_clear_message(monkeypatch):
    import gymnasium
    monkeypatch.setattr(gymnasium, "__version__", "1.3.0")
    with pytest.raises(ImportError, match="gymnasium >= 1.4"):
        make_envs("CartPole-v1", 1, 0)


# ------------------------------------------------------------- what an environment returns

class Scripted(gym.Env):
    """Box(3) observations of 0.1, Discrete(2) actions, reward 1.0, truncated after 4 steps.

    ``edit(t, result)`` replaces what ``reset`` (t = 0) or step t returns, in sub-environment 1 only
    (``Runner(..., seed=0)`` resets sub-environment i with seed i).
    """

    def __init__(self, edit=None):
        self.action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        self.edit, self.t, self.index = edit, 0, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.index = seed if seed is not None else self.index
        self.t = 0
        return self.edited((np.full(3, 0.1, dtype=np.float32), {}))

    def step(self, action):
        self.t += 1
        return self.edited((np.full(3, 0.1, dtype=np.float32), 1.0, False, self.t >= 4, {}))

    def edited(self, result):
        return self.edit(self.t, result) if self.edit is not None and self.index == 1 else result


def scripted(name, edit):
    env_id = f"rlnotes-rollout-test/{name}-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=Scripted, kwargs=dict(edit=edit))
    return env_id


NAN_OBS = np.array([np.nan, 0.1, 0.1], dtype=np.float32)


def opened_envs(monkeypatch):
    """The vector environments that ``Runner`` makes, recorded as it makes them."""
    made = []
    original = rollout.make_envs
    monkeypatch.setattr(rollout, "make_envs", lambda *a, **kw: made.append(original(*a, **kw)) or made[-1])
    return made


def test_a_nan_observation_from_reset_is_named_and_the_environments_are_closed(monkeypatch):
    made = opened_envs(monkeypatch)
    env_id = scripted("NaNReset", lambda t, r: (NAN_OBS, {}) if t == 0 else r)
    with pytest.raises(ValueError, match=r"environment 'rlnotes-rollout-test/NaNReset-v0' returned a non-finite "
                                         r"observation \(\[nan 0.1 0.1\]\) from reset\(\) \(sub-environment 1\)"):
        Runner(env_id, 2, 0, 0.99, History())
    assert len(made) == 1 and made[0].closed


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # NumPy's, as the reward is cast
def test_a_reward_beyond_float32_is_named_with_its_environment_and_step():
    env_id = scripted("HugeReward", lambda t, r: (r[0], 1e39, *r[2:]) if t == 2 else r)
    runner = Runner(env_id, 2, 0, 0.99, History())
    with pytest.raises(ValueError, match=r"environment 'rlnotes-rollout-test/HugeReward-v0' returned a reward too "
                                         r"large for float32 \(\[1.e\+00 1.e\+39\]\) at environment step 4 "
                                         r"\(sub-environment 1\): rlnotes stores rewards and observations as float32"):
        runner.rollout(Always(0), constant_value(0.0), 3)
    runner.close()


def test_a_nan_final_observation_of_a_truncated_episode_is_reported_as_an_observation():
    env_id = scripted("NaNFinal", lambda t, r: (NAN_OBS, *r[1:]) if t == 4 else r)
    runner = Runner(env_id, 2, 0, 0.99, History())
    with pytest.raises(ValueError, match=r"returned a non-finite final observation \(info\['final_obs'\]\) "
                                         r"\(\[nan 0.1 0.1\]\) at environment step 8 \(sub-environment 1\)"):
        runner.rollout(Always(0), constant_value(0.0), 5)
    runner.close()


@pytest.mark.parametrize("name, edit, error, message", [
    ("ArrayReward", lambda t, r: (r[0], np.array([r[1]]), *r[2:]) if t else r, TypeError,
     r"\(sub-environment 1\): step\(\) returned the reward array\(\[1.\]\) at its step 1; gymnasium's API expects one "
     r"number per step \(a float or an int\)"),
    ("WrongShape", lambda t, r: (np.zeros(4, dtype=np.float32), *r[1:]) if t == 2 else r, ValueError,
     r"\(sub-environment 1\): step\(\) at its step 2 returned an observation of shape \(4,\); its observation space "
     r"Box\(-1.0, 1.0, \(3,\), float32\) holds observations of shape \(3,\)"),
    ("OldStep", lambda t, r: (r[0], r[1], r[2] or r[3], r[4]) if t else r, ValueError,
     r"\(sub-environment 1\): step\(\) returned 4 values at its step 1; gymnasium's API expects a tuple of 5, "
     r"\(observation, reward, terminated, truncated, info\), not the old gym API's 4"),
])
def test_a_step_outside_gymnasiums_api_is_named(name, edit, error, message):
    runner = Runner(scripted(name, edit), 2, 0, 0.99, History())
    with pytest.raises(error, match=rf"environment 'rlnotes-rollout-test/{name}-v0' {message}"):
        runner.rollout(Always(0), constant_value(0.0), 3)
    runner.close()


def test_the_old_gym_reset_is_named_and_the_environments_are_closed(monkeypatch):
    made = opened_envs(monkeypatch)
    with pytest.raises(TypeError, match=r"environment 'rlnotes-rollout-test/OldReset-v0' \(sub-environment 1\): "
                                        r"reset\(\) returned array\(\[0.1, 0.*; gymnasium's API expects a tuple "
                                        r"\(observation, info dict\), not the old gym API's observation alone"):
        Runner(scripted("OldReset", lambda t, r: r[0] if t == 0 else r), 2, 0, 0.99, History())
    assert len(made) == 1 and made[0].closed


def test_any_real_number_is_a_reward_and_any_sequence_of_the_right_shape_an_observation():
    rewards = {1: np.float32(0.5), 2: np.int64(2), 3: True, 4: np.array(1e38)}  # 1e38: finite as a float32

    def edit(t, r):
        return r if t == 0 else ([0.2, 0.1, 0.1], rewards[t], *r[2:])
    runner = Runner(scripted("Numbers", edit), 2, 0, 0.5, History())
    batch = runner.rollout(Always(0), constant_value(0.0), 4)
    runner.close()
    torch.testing.assert_close(batch.rewards[:, 1], torch.tensor([0.5, 2.0, 1.0, 1e38]))
    torch.testing.assert_close(batch.rewards[:, 0], torch.ones(4))
    torch.testing.assert_close(batch.obs[1:, 1], torch.tensor([[0.2, 0.1, 0.1]] * 3))


def test_runner_and_make_envs_refuse_bad_arguments_by_name():
    with pytest.raises(TypeError, match="env_id must be a gymnasium id such as 'CartPole-v1', got 5"):
        make_envs(5, 1, 0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        make_envs("CartPole-v1", 1, -1)
    with pytest.raises(TypeError, match="gamma must be a number, got True"):
        Runner("CartPole-v1", 1, 0, True, History())
    with pytest.raises(TypeError, match="history must be an rlnotes.trainer.History, got NoneType"):
        Runner("CartPole-v1", 1, 0, 0.99, None)
    runner = Runner("CartPole-v1", 1, 0, 0.99, History())
    with pytest.raises(TypeError, match="num_steps must be an integer, got True"):
        runner.rollout(Always(0), constant_value(0.0), True)
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        runner.rollout(Always(0), constant_value(0.0), 0)
    assert runner.rollout(Always(0), constant_value(0.0), 2.0).rewards.shape == (2, 1)  # a whole float is fine
    runner.close()


def test_control_config_refuses_a_bad_seed_by_name():
    for seed, error, message in [(-1, ValueError, "seed must be >= 0, got -1"),
                                 ("0", TypeError, "seed must be an integer, got '0'"),
                                 (True, TypeError, "seed must be an integer, got True"),
                                 (2**64, ValueError, r"seed must be below 2\*\*63, got 18446744073709551616")]:
        with pytest.raises(error, match=message):
            ControlConfig(total_steps=64, seed=seed)


def test_control_config_takes_numpy_integers_as_seeds_and_refuses_flags_as_numbers():
    cfg = ControlConfig(total_steps=64, seed=np.int64(3))
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert ControlConfig(total_steps=64, seed=2**63 - 1).seed == 2**63 - 1
    for name in ("gamma", "lam"):
        with pytest.raises(TypeError, match=f"{name} must be a number, got True"):
            ControlConfig(total_steps=64, seed=0, **{name: True})
    assert ControlConfig(total_steps=64, seed=0, gamma=1, lam=np.float32(0.5)).gamma == 1.0


# ------------------------------------------------------------- a toy environment: NaN, Discrete(n, start)

CONTROL_TRAINERS = [pg.train, trpo.train, ppo.train]
TINY = dict(total_steps=32, num_envs=2, num_steps=8, seed=0)


class ToyEnv(gym.Env):
    """A 3-dimensional Box observation, a Discrete(2, start) action; episodes of 10 steps.

    ``bad`` makes step 3 of every episode return a NaN reward ("reward") or observation
    ("observation"). The environment asserts that every action it gets lies in its action space,
    and records the actions it saw in the class attribute ``seen``.
    """

    seen: set = set()

    def __init__(self, start: int = 0, bad: str | None = None):
        self.action_space = gym.spaces.Discrete(2, start=start)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        self.bad, self.t = bad, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample() * 0 + 0.1, {}

    def step(self, action):
        assert self.action_space.contains(action), f"action {action!r} is outside {self.action_space}"
        ToyEnv.seen.add(int(action))
        self.t += 1
        obs = np.full(3, 0.1 * (self.t % 5), dtype=np.float32)
        reward = float(action == self.action_space.start)
        if self.t == 3 and self.bad == "reward":
            reward = math.nan
        if self.t == 3 and self.bad == "observation":
            obs[1] = math.nan
        return obs, reward, self.t >= 10, False, {}


for env_id, kwargs in {"rlnotes-test/NaNReward-v0": dict(bad="reward"),
                       "rlnotes-test/NaNObservation-v0": dict(bad="observation"),
                       "rlnotes-test/StartAtOne-v0": dict(start=1)}.items():
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=ToyEnv, kwargs=kwargs)


@pytest.mark.parametrize("train", CONTROL_TRAINERS, ids=["pg", "trpo", "ppo"])
def test_a_nan_reward_is_refused_naming_the_reward_the_env_and_the_step(train):
    with pytest.raises(ValueError, match=r"environment 'rlnotes-test/NaNReward-v0' returned a non-finite reward "
                                         r"\(\[nan nan\]\) at environment step 6"):  # 2 envs x 3 steps
        train("rlnotes-test/NaNReward-v0", **TINY)


@pytest.mark.parametrize("train", CONTROL_TRAINERS, ids=["pg", "trpo", "ppo"])
def test_a_nan_observation_is_refused_naming_the_observation(train):
    with pytest.raises(ValueError, match="'rlnotes-test/NaNObservation-v0' returned a non-finite observation"):
        train("rlnotes-test/NaNObservation-v0", **TINY)


def test_the_environments_are_closed_when_the_environment_fails(monkeypatch):
    closed = []
    original = rollout.Runner.close
    monkeypatch.setattr(rollout.Runner, "close", lambda self: closed.append(self.envs) or original(self))
    with pytest.raises(ValueError, match="non-finite reward"):
        ppo.train("rlnotes-test/NaNReward-v0", **TINY)
    assert len(closed) == 1 and closed[0].closed


@pytest.mark.parametrize("train", CONTROL_TRAINERS, ids=["pg", "trpo", "ppo"])
def test_a_discrete_space_with_a_start_gets_actions_in_its_range(train):
    ToyEnv.seen = set()
    out = train("rlnotes-test/StartAtOne-v0", **TINY)  # the env asserts every action is 1 or 2
    assert ToyEnv.seen == {1, 2}
    assert out.policy.logits_net[-1].out_features == 2  # the policy's own indices stay 0 and 1
    # the env pays 1 for its first action, 1: the returns count the steps where the policy chose index 0
    assert np.all((out.history.episode_returns >= 0) & (out.history.episode_returns <= 10))


@pytest.mark.parametrize("name, edit, message", [
    ("StrTerminated", lambda t, r: (*r[:2], "no", *r[3:]) if t == 2 else r, r"terminated='no' at its step 2"),
    ("NoneTerminated", lambda t, r: (*r[:2], None, *r[3:]) if t == 2 else r, r"terminated=None at its step 2"),
    ("HalfTerminated", lambda t, r: (*r[:2], 0.5, *r[3:]) if t == 2 else r, r"terminated=0.5 at its step 2"),
    ("StrTruncated", lambda t, r: (*r[:3], "no", r[4]) if t == 2 else r, r"truncated='no' at its step 2"),
])
def test_terminated_and_truncated_must_be_bools(name, edit, message):
    runner = Runner(scripted(name, edit), 2, 0, 0.99, History())
    with pytest.raises(TypeError, match=rf"environment 'rlnotes-rollout-test/{name}-v0' \(sub-environment 1\): "
                                        rf"step\(\) returned {message}; gymnasium's API expects a bool"):
        runner.rollout(Always(0), constant_value(0.0), 3)
    runner.close()


def test_numpy_bools_are_accepted_as_terminated_and_truncated():
    runner = Runner(scripted("NumpyBools", lambda t, r: (*r[:2], np.bool_(r[2]), np.bool_(r[3]), r[4]) if t else r),
                    2, 0, 0.99, History())
    batch = runner.rollout(Always(0), constant_value(0.0), 4)
    runner.close()
    assert batch.rewards.shape == (4, 2)


def test_an_info_that_is_not_a_dict_is_named():
    runner = Runner(scripted("ListInfo", lambda t, r: (*r[:4], []) if t == 2 else r), 2, 0, 0.99, History())
    with pytest.raises(TypeError, match=r"environment 'rlnotes-rollout-test/ListInfo-v0' \(sub-environment 1\): "
                                        r"step\(\) returned info=\[\] at its step 2; gymnasium's API expects an info dict"):
        runner.rollout(Always(0), constant_value(0.0), 3)
    runner.close()


def test_an_unknown_env_id_and_too_many_environments_are_named():
    with pytest.raises(ValueError, match=r"env_id must be a registered gymnasium environment such as "
                                         r"'CartPole-v1', got 'NoSuchEnv-v0' \(.*NoSuchEnv.*\)"):
        make_envs("NoSuchEnv-v0", 1, 0)
    with pytest.raises(ValueError, match=rf"num_envs must be <= {rollout.MAX_ENVS} .*, got 10000000"):
        make_envs("CartPole-v1", 10**7, 0)


def test_a_reset_whose_info_is_not_a_dict_is_named(monkeypatch):
    made = opened_envs(monkeypatch)
    env_id = scripted("InfoNone", lambda t, r: (r[0], None) if t == 0 else r)
    with pytest.raises(TypeError, match=r"environment 'rlnotes-rollout-test/InfoNone-v0' \(sub-environment 1\): "
                                        r"reset\(\) returned info=None; gymnasium's API expects an info dict"):
        Runner(env_id, 2, 0, 0.99, History())
    assert len(made) == 1 and made[0].closed


def test_control_configs_refuse_sizes_beyond_memory_by_name():
    from rlnotes import pg
    with pytest.raises(ValueError, match=r"hidden must be <= 8192, got 1000000"):
        pg.PGConfig(total_steps=64, seed=0, hidden=10**6)
    with pytest.raises(ValueError, match=r"num_steps must be <= 4194304, got 1000000000"):
        pg.PGConfig(total_steps=64, seed=0, num_steps=10**9)
    with pytest.raises(ValueError, match=r"num_envs must be <= 4096, got 1000000"):
        pg.PGConfig(total_steps=64, seed=0, num_envs=10**6)
    with pytest.raises(ValueError, match=r"num_envs \* num_steps .* must be <= 4194304, got 4096 \* 4096"):
        pg.PGConfig(total_steps=64, seed=0, num_envs=4096, num_steps=4096)
