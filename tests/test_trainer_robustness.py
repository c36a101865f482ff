"""What a user meets when something is off (issue 12, the trainers' side): each test makes the call
a user would make and checks the message they get, or that the call now simply works."""

from __future__ import annotations

import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlnotes import dpo, lm, pg, ppo, rlhf, rollout, trpo
from rlnotes.actor_critic import ActorCritic, make_optimizer
from rlnotes.nets import CategoricalPolicy, ValueNet
from rlnotes.returns import normalize
from rlnotes.trainer import TrainingInterrupted

CONTROL_TRAINERS = [pg.train, trpo.train, ppo.train]
TINY = dict(total_steps=32, num_envs=2, num_steps=8, seed=0)


# ------------------------------------------------------------------- environments for the tests

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


# ------------------------------------------------------------------- (1) non-finite environments

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


# ------------------------------------------------------------------- (2) Discrete(n, start)

@pytest.mark.parametrize("train", CONTROL_TRAINERS, ids=["pg", "trpo", "ppo"])
def test_a_discrete_space_with_a_start_gets_actions_in_its_range(train):
    ToyEnv.seen = set()
    out = train("rlnotes-test/StartAtOne-v0", **TINY)  # the env asserts every action is 1 or 2
    assert ToyEnv.seen == {1, 2}
    assert out.policy.logits_net[-1].out_features == 2  # the policy's own indices stay 0 and 1
    # the env pays 1 for its first action, 1: the returns count the steps where the policy chose index 0
    assert np.all((out.history.episode_returns >= 0) & (out.history.episode_returns <= 10))


# ------------------------------------------------------------------- (3) RLHF's PPO arguments

def test_train_ppo_refuses_a_zero_max_grad_norm_and_a_negative_vf_coef_by_name(tiny_prepared):
    with pytest.raises(ValueError, match="max_grad_norm must be > 0, got 0.0"):
        rlhf.train_ppo(tiny_prepared, max_grad_norm=0)
    with pytest.raises(ValueError, match=r"vf_coef must be in \[0.0, inf\], got -1.0"):
        rlhf.train_ppo(tiny_prepared, vf_coef=-1)


def test_train_ppo_eps_is_any_positive_finite_number(tiny_prepared):
    with pytest.raises(ValueError, match="eps must be > 0"):
        rlhf.train_ppo(tiny_prepared, eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        rlhf.train_ppo(tiny_prepared, eps=math.inf)
    out = rlhf.train_ppo(tiny_prepared, eps=1.5, steps=1, batch_size=2, epochs=1)  # (0, inf): 1.5 is fine
    assert out.config.eps == 1.5 and len(out.history) == 1


# ------------------------------------------------------------------- (7) batches of one

def test_a_batch_of_one_step_runs_without_normalisation_and_is_refused_with_it():
    out = pg.train(total_steps=4, seed=0, num_envs=1, num_steps=1, normalize_advantages=False)
    assert len(out.history) == 4 and np.isfinite(out.history.update_array("loss/value")).all()
    with pytest.raises(ValueError, match=r"num_envs \* num_steps must be >= 2 to normalise advantages per batch "
                                         r"\(got 1 \* 1\); or pass normalize_advantages=False"):
        pg.train(total_steps=4, seed=0, num_envs=1, num_steps=1)
    assert normalize(torch.tensor([3.0])).item() == 0.0


# ------------------------------------------------------------------- (8) the adaptive KL controller

def test_adaptive_kl_controller_refuses_what_would_break_beta():
    ctl = rlhf.AdaptiveKLController(0.1, target=1.0, horizon=10)
    with pytest.raises(ValueError, match=r"n_steps must be <= horizon \(10\) so that beta stays positive, got 100"):
        ctl.update(0.0, 100)
    with pytest.raises(ValueError, match="kl must be finite, got nan"):
        ctl.update(math.nan, 10)
    assert ctl.beta == 0.1  # the refused updates changed nothing
    for _ in range(2000):  # KL = 0 for ever: beta shrinks by 20% per update but stays > 0
        beta = ctl.update(0.0, 10)
        assert beta > 0
    assert beta == pytest.approx(0.1 * 0.8 ** 2000, rel=1e-9)


# ------------------------------------------------------------------- (10) Ctrl-C inside an update

@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in an interactive session or a notebook (a job started in
    the background, as CI may be, begins with SIGINT ignored, and a trainer respects that)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_on_call(fn, when: int, calls: list):
    """``fn`` wrapped so that its ``when``-th call (from 1) first sends this process a real SIGINT."""
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == when:
            os.kill(os.getpid(), signal.SIGINT)
        return fn(*args, **kwargs)
    return wrapped


PPO_RUN = dict(seed=3, epochs=2, minibatch_size=256, anneal_lr=False, anneal_eps=False)  # 4 Adam steps per update


def test_ctrl_c_inside_a_ppo_update_finishes_it_then_stops_with_the_result(monkeypatch, ctrl_c_raises):
    handler_before = signal.getsignal(signal.SIGINT)
    closed, steps = [], []
    original_close = rollout.Runner.close
    monkeypatch.setattr(rollout.Runner, "close", lambda self: closed.append(self.envs) or original_close(self))

    def optimizer_sending_sigint(net, lr):  # Ctrl-C at the first Adam step of the second update
        opt = make_optimizer(net, lr)
        opt.step = _sigint_on_call(opt.step, 5, steps)
        return opt

    monkeypatch.setattr(ppo, "make_optimizer", optimizer_sending_sigint)
    with pytest.raises(TrainingInterrupted, match="training stopped after 2 complete updates") as stop:
        ppo.train(total_steps=5 * 512, **PPO_RUN)
    monkeypatch.undo()
    assert isinstance(stop.value, KeyboardInterrupt)  # `except KeyboardInterrupt` catches it
    out = stop.value.result
    assert len(steps) == 8  # the interrupted update ran all its 4 steps, no step of a third
    assert len(out.history) == 2 and out.history.update_array("env_steps").tolist() == [512, 1024]
    assert len(closed) == 1 and closed[0].closed  # the environments were closed
    assert signal.getsignal(signal.SIGINT) is handler_before  # the caller's handler is back
    # the model is the one after the two complete updates: the same as an uninterrupted 2-update run
    full = ppo.train(total_steps=2 * 512, **PPO_RUN)
    for p, q in zip(list(out.policy.parameters()) + list(out.value_fn.parameters()),
                    list(full.policy.parameters()) + list(full.value_fn.parameters())):
        assert torch.equal(p, q)
    assert {k: v for k, v in out.history.updates.items() if k != "seconds"} == \
        {k: v for k, v in full.history.updates.items() if k != "seconds"}


@pytest.fixture(scope="module")
def tiny_pairs():
    task = lm.SentimentTask()
    tok = lm.build_tokenizer(task)
    ref = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0).requires_grad_(False)
    prompts = ["review of the movie :", "so , the book :", "game review :", "my thoughts on the cafe :"] * 4
    chosen = ["it was great .", "great , good and fun .", "lovely .", "the price was superb ."] * 4
    rejected = ["it was awful and bad .", "dull .", "the story is boring but weak .", "poor ."] * 4
    prefs = rlhf.Preferences(prompts, chosen, rejected, torch.zeros(16), torch.zeros(16))
    return ref, prefs.encode(tok)


def test_ctrl_c_inside_a_dpo_step_finishes_it_then_stops_with_the_result(monkeypatch, tiny_pairs, ctrl_c_raises):
    ref, data = tiny_pairs
    kw = dict(epochs=2, batch_size=4, lr=1e-2, seed=0)  # 8 steps
    # the weights after every step of an uninterrupted run
    snapshots = []
    original_step = dpo.dpo_step

    def recording_step(policy, *args):
        stats = original_step(policy, *args)
        snapshots.append([p.detach().clone() for p in policy.parameters()])
        return stats

    monkeypatch.setattr(dpo, "dpo_step", recording_step)
    full = dpo.train(None, ref, data, **kw)
    assert len(snapshots) == 8
    # the same run, with Ctrl-C at the start of the third step
    calls = []
    monkeypatch.setattr(dpo, "dpo_step", _sigint_on_call(original_step, 3, calls))
    with pytest.raises(TrainingInterrupted, match="after 3 complete updates") as stop:
        dpo.train(None, ref, data, **kw)
    out = stop.value.result
    assert len(calls) == 3 and len(out.history) == 3
    assert out.history.updates["loss"] == full.history.updates["loss"][:3]
    for p, q in zip(out.model.parameters(), snapshots[2]):
        assert torch.equal(p, q)  # the weights after step 3, complete
    assert not out.model.training  # left in eval mode, as after a finished run


# ------------------------------------------------------------------- (13) the rest

def test_pg_refuses_zero_value_iterations_by_name():
    with pytest.raises(ValueError, match="vf_iters must be >= 1, got 0"):
        pg.train(total_steps=64, seed=0, vf_iters=0)


def test_ppo_update_refuses_an_empty_batch_and_obs_without_one_row_per_action():
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    opt = make_optimizer(net, 1e-3)
    empty = torch.zeros(0)
    with pytest.raises(ValueError, match=r"obs and actions must hold the same number \(>= 1\) of samples, got 0 and 0"):
        ppo.update(net, opt, torch.zeros(0, 4), empty.long(), empty, empty, empty)
    n = torch.zeros(5)
    with pytest.raises(ValueError, match=r"obs and actions must hold the same number \(>= 1\) of samples, got 3 and 5"):
        ppo.update(net, opt, torch.zeros(3, 4), n.long(), n, n, n)


def test_dpo_refuses_the_reference_as_the_policy(tiny_pairs):
    ref, data = tiny_pairs
    with pytest.raises(ValueError, match="policy must not be ref itself"):
        dpo.train(ref, ref, data)


def test_token_rewards_accept_a_float_mask():
    torch.manual_seed(0)
    logp, logp_ref, r_phi = torch.randn(2, 4), torch.randn(2, 4), torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    as_int = rlhf.token_rewards(r_phi, logp, logp_ref, mask, beta=0.1)
    as_float = rlhf.token_rewards(r_phi, logp, logp_ref, mask.float(), beta=0.1)
    torch.testing.assert_close(as_float, as_int)
    assert as_float[0, 2] == pytest.approx(-0.1 * (logp[0, 2] - logp_ref[0, 2]).item() + 1.0)  # r_phi at the last token


def test_whole_floats_are_accepted_where_counts_are_expected(tiny_prepared):
    out = pg.train(total_steps=128, seed=0, num_envs=2, num_steps=64.0)
    assert out.config.num_steps == 64 and type(out.config.num_steps) is int and len(out.history) == 1
    task, tok = tiny_prepared.task, tiny_prepared.tokenizer
    xs, ys = task.sft_corpus(8, seed=0)
    model = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0)
    sft = rlhf.train_sft(model, tok, xs, ys, steps=300.0, batch_size=1, lr=1e-3)
    assert sft.config.steps == 300 and type(sft.config.steps) is int and len(sft.history) == 300
    with pytest.raises(TypeError, match="steps must be an integer, got 300.5"):
        rlhf.train_sft(model, tok, xs, ys, steps=300.5)


def test_none_is_refused_where_a_field_is_not_optional():
    # seed, total_steps ... must be given; only fields typed ``X | None`` take None ("off")
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        pg.train("CartPole-v1", total_steps=512, seed=None)
    with pytest.raises(TypeError, match="lr must be a number, got None"):
        ppo.train("CartPole-v1", total_steps=512, seed=0, lr=None)
    assert ppo.UpdateConfig(max_grad_norm=None).max_grad_norm is None
