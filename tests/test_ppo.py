"""rlnotes.ppo: the clipped surrogate and its loss, the update, the trainer on CartPole, epochs on
one batch; a Ctrl-C inside an update; and what each refuses."""

import math
import signal

import numpy as np
import pytest
import torch

from rlnotes import ppo, rollout
from rlnotes.actor_critic import ActorCritic, make_optimizer
from rlnotes.kl import mean_kl
from rlnotes.nets import CategoricalPolicy, ValueNet
from rlnotes.trainer import TrainingInterrupted


def test_ratio_is_exp_of_log_difference():
    logp, logp_old = torch.log(torch.tensor([0.2, 0.5])), torch.log(torch.tensor([0.4, 0.25]))
    torch.testing.assert_close(ppo.ratio(logp, logp_old), torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="shapes must match"):
        ppo.ratio(logp, logp_old[:1])


def test_clipped_surrogate_closed_form_both_signs():
    r = torch.tensor([0.5, 0.8, 1.0, 1.1, 1.2, 1.5, 3.0])
    eps = 0.2
    # A > 0: min(r, 1.2) A ; A < 0: max(r, 0.8) A
    torch.testing.assert_close(ppo.clipped_surrogate(r, torch.full_like(r, 2.0), eps),
                               2.0 * torch.clamp(r, max=1.2))
    torch.testing.assert_close(ppo.clipped_surrogate(r, torch.full_like(r, -3.0), eps),
                               -3.0 * torch.clamp(r, min=0.8))
    assert ppo.clipped_surrogate(r, torch.zeros_like(r), eps).abs().max() == 0
    # array-likes are accepted
    np.testing.assert_allclose(ppo.clipped_surrogate([1.5], [1.0], 0.2).numpy(), [1.2])


def test_clipped_surrogate_gradient_is_zero_exactly_in_the_flat_regions():
    eps = 0.2
    r = torch.tensor([0.5, 0.9, 1.1, 1.5], requires_grad=True)
    for a, zero in [(1.0, [False, False, False, True]), (-1.0, [True, False, False, False])]:
        (grad,) = torch.autograd.grad(ppo.clipped_surrogate(r, torch.full((4,), a), eps).sum(), r)
        assert (grad == 0).tolist() == zero
        torch.testing.assert_close(grad[~torch.tensor(zero)], torch.full((3,), a))


@pytest.mark.parametrize("eps", [0.0, -0.1, math.inf, math.nan])
def test_clipped_surrogate_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        ppo.clipped_surrogate(torch.ones(3), torch.ones(3), eps)


def test_clipped_surrogate_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="ratio"):
        ppo.clipped_surrogate(torch.ones(3), torch.ones(2), 0.2)


def test_approx_kl_matches_exact_kl_for_samples():
    # E_{a~p}[(r - 1) - log r] with r = q/p is KL[p || q] exactly when averaged over p
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    exact = (p * (p / q).log()).sum()
    r = q / p
    assert (p * ((r - 1) - r.log())).sum().item() == pytest.approx(exact.item(), rel=1e-6)
    old, new = p.log().expand(4, 3), q.log().expand(4, 3)
    assert mean_kl(old, new).item() == pytest.approx(exact.item(), rel=1e-6)
    # ppo.approx_kl is that k3 estimator averaged over samples a ~ p, from log r = log q(a) - log p(a)
    log_r = (q.log() - p.log())
    torch.testing.assert_close(ppo.approx_kl(log_r.repeat(3)), ((r - 1) - r.log()).mean())


def test_ppo_loss_terms_and_gradient():
    torch.manual_seed(0)
    n = 8
    logp = torch.randn(n).mul(0.3).sub(1.0).requires_grad_()
    logp_old = logp.detach() + torch.randn(n) * 0.3
    adv, values, returns = torch.randn(n), torch.randn(n, requires_grad=True), torch.randn(n)
    entropy = torch.rand(n)
    out = ppo.ppo_loss(logp, logp_old, adv, values, returns, entropy, eps=0.2, ent_coef=0.01)  # vf_coef = 1
    r = torch.exp(logp.detach() - logp_old)
    l_clip = torch.min(r * adv, r.clamp(0.8, 1.2) * adv).mean()
    mse = ((values.detach() - returns) ** 2).mean()
    torch.testing.assert_close(out.policy_loss, -l_clip)
    torch.testing.assert_close(out.value_loss, 0.5 * mse)  # L^VF = 1/2 E[(V - V^targ)^2]
    torch.testing.assert_close(out.entropy, entropy.mean())
    # the default c_1 = 1 on the half squared error is SB3's c_1 = 0.5 on the plain squared error
    torch.testing.assert_close(out.loss.detach(), -l_clip + 0.5 * mse - 0.01 * entropy.mean())
    torch.testing.assert_close(out.approx_kl, ((r - 1) - r.log()).mean())
    torch.testing.assert_close(out.clip_fraction, ((r - 1).abs() > 0.2).float().mean())
    out.loss.backward()
    # value gradient of c_1 * 1/2 mean (V - R)^2 with c_1 = 1: (V - R) / n
    torch.testing.assert_close(values.grad, (values.detach() - returns) / n)
    # vf_coef scales the value term linearly
    out2 = ppo.ppo_loss(logp.detach(), logp_old, adv, values.detach(), returns, entropy, eps=0.2, vf_coef=3.0,
                        ent_coef=0.01)
    torch.testing.assert_close(out2.loss, -l_clip + 3.0 * 0.5 * mse - 0.01 * entropy.mean())
    # the policy gradient is zero for samples in the flat region
    flat = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))
    assert torch.all(logp.grad[flat] == 0) and torch.all(logp.grad[~flat] != 0)


def test_ppo_loss_without_entropy_and_bad_arguments():
    x = torch.zeros(3)
    out = ppo.ppo_loss(x, x, x, x, x, None)
    assert math.isnan(out.entropy.item()) and torch.isfinite(out.loss)
    assert out.approx_kl.item() == 0.0 and out.clip_fraction.item() == 0.0  # r = 1 everywhere
    with pytest.raises(ValueError, match="ent_coef"):
        ppo.ppo_loss(x, x, x, x, x, None, ent_coef=0.1)
    with pytest.raises(ValueError, match="vf_coef"):
        ppo.ppo_loss(x, x, x, x, x, x, vf_coef=-1.0)
    with pytest.raises(ValueError, match="eps"):
        ppo.ppo_loss(x, x, x, x, x, x, eps=0.0)
    with pytest.raises(ValueError, match="shapes must match"):
        ppo.ppo_loss(x, x, x, torch.zeros(2), x, x)


def test_ppo_loss_is_finite_at_extreme_log_ratios_and_logits():
    logp = torch.tensor([-30.0, 0.0, -1e-3])
    logp_old = torch.tensor([0.0, -30.0, -1e-3])
    out = ppo.ppo_loss(logp, logp_old, torch.tensor([1.0, -1.0, 1.0]), torch.zeros(3), torch.zeros(3),
                       torch.zeros(3))
    assert torch.isfinite(out.loss) and torch.isfinite(out.approx_kl)


def test_update_many_epochs_moves_policy_and_clipping_limits_ratio_growth():
    torch.manual_seed(0)
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    obs = torch.randn(64, 4)
    with torch.no_grad():
        a, logp_old, _ = net.act(obs)
        old = net(obs)[0]
    adv, ret = torch.randn(64), torch.randn(64)
    stats = ppo.update(net, make_optimizer(net, 3e-3), obs, a, logp_old, adv, ret, epochs=5,
                       minibatch_size=16, eps=0.2)
    assert set(stats) == {"loss", "policy_loss", "value_loss", "approx_kl", "clip_fraction", "entropy"}
    assert all(math.isfinite(v) for v in stats.values())
    with torch.no_grad():
        assert mean_kl(old, net(obs)[0]).item() > 0
    with pytest.raises(TypeError, match="epoch"):  # a misspelt keyword is refused, not ignored
        ppo.update(net, make_optimizer(net, 3e-3), obs, a, logp_old, adv, ret, epoch=5)


def test_train_runs_logs_and_is_deterministic():
    kw = dict(total_steps=512, seed=1, num_envs=2, num_steps=32, epochs=2, minibatch_size=32, lr=1e-3)
    out1, out2 = ppo.train("CartPole-v1", **kw), ppo.train("CartPole-v1", **kw)
    h1, h2 = out1.history, out2.history
    assert len(h1.update_array("kl/exact_per_state")) == 8
    names = ["env_steps", "kl/exact_per_state", "kl/k3_per_sample", "clip_ratio/region_mean", "loss/policy",
             "loss/value", "entropy", "learning_rate", "eps", "ratio_min", "ratio_max", "seconds"]
    assert set(h1.updates) == set(names)
    for name in names:
        assert len(h1.update_array(name)) == 8, name
    np.testing.assert_array_equal(h1.update_array("kl/exact_per_state"), h2.update_array("kl/exact_per_state"))
    np.testing.assert_array_equal(h1.episode_returns, h2.episode_returns)
    # linear annealing from lr and eps towards 0
    np.testing.assert_allclose(h1.update_array("learning_rate"), 1e-3 * (1 - np.arange(8) / 8))
    np.testing.assert_allclose(h1.update_array("eps"), 0.2 * (1 - np.arange(8) / 8))
    assert isinstance(out1.policy, CategoricalPolicy) and isinstance(out1.value_fn, ValueNet)
    assert out1.policy is out1.model
    assert np.all(h1.update_array("kl/exact_per_state") >= 0) and np.all(h1.update_array("kl/k3_per_sample") >= 0)
    assert np.all((h1.update_array("clip_ratio/region_mean") >= 0) & (h1.update_array("clip_ratio/region_mean") <= 1))


def test_train_other_discrete_environment():
    out = ppo.train("Acrobot-v1", total_steps=256, seed=0, num_envs=2, num_steps=64, epochs=1, minibatch_size=64)
    assert out.policy.logits_net[-1].out_features == 3
    assert np.isfinite(out.history.update_array("kl/exact_per_state")).all()


def test_train_rejects_continuous_actions_and_bad_arguments():
    with pytest.raises(ValueError, match="Discrete"):
        ppo.train("Pendulum-v1", total_steps=64, seed=0)
    with pytest.raises(ValueError, match="eps"):
        ppo.train(total_steps=64, seed=0, eps=0.0)
    with pytest.raises(ValueError, match="epochs"):
        ppo.train(total_steps=64, seed=0, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        ppo.train(total_steps=64, seed=0, lr=-1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        ppo.train(total_steps=64, seed=0, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="gamma"):
        ppo.train(total_steps=64, seed=0, gamma=1.5)


def test_kl_bound_inside_clip_closed_form_and_validity():
    eps = 0.2
    bound = ppo.kl_bound_inside_clip(eps)
    assert bound == pytest.approx(eps ** 2 / (2 * (1 - eps) ** 2)) == pytest.approx(0.03125)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(3000):
        p = rng.dirichlet(np.ones(rng.integers(2, 6)))
        q = p * rng.uniform(1 - eps, 1 + eps, len(p))
        q /= q.sum()
        if np.all(np.abs(q / p - 1) <= eps):  # every ratio inside the clip range
            worst = max(worst, float(np.sum(p * np.log(p / q))))
    assert 0 < worst <= bound
    # two equally likely actions pushed to ratios 1 + eps and 1 - eps: KL = -log(1 - eps^2) / 2
    assert -0.5 * math.log(1 - eps ** 2) <= bound
    assert ppo.kl_bound_inside_clip(1.0) == math.inf
    with pytest.raises(ValueError, match="eps"):
        ppo.kl_bound_inside_clip(-0.1)


def test_epochs_on_one_batch_records_each_epoch():
    kw = dict(seed=0, epochs=3, num_envs=2, num_steps=16, minibatch_size=32)
    res = ppo.epochs_on_one_batch(**kw)
    out = {k: res.history.update_array(k) for k in res.history.updates}
    assert set(out) == {"kl/exact_per_state", "outside", "ratio_max"} and all(len(v) == 3 for v in out.values())
    kl = out["kl/exact_per_state"]
    assert np.all(kl >= 0) and kl[-1] > 0 and np.all((out["outside"] >= 0) & (out["outside"] <= 1))
    np.testing.assert_array_equal(kl, ppo.epochs_on_one_batch(**kw).history.update_array("kl/exact_per_state"))
    assert isinstance(res.policy, CategoricalPolicy) and isinstance(res.value_fn, ValueNet)


def test_train_stop_return_stops_once_the_moving_mean_reaches_it():
    h = ppo.train("CartPole-v1", total_steps=4096, seed=0, num_envs=4, num_steps=16, epochs=1, minibatch_size=64,
                  stop_return=15.0).history
    reached = h.steps_to_reach(15.0)
    assert reached < 4096 and h.update_array("env_steps")[-1] - reached < 64  # stopped in that iteration


def test_ppo_loss_without_diagnostics_is_the_same_loss():
    """``update`` calls ``ppo_loss`` itself per minibatch, with ``diagnostics=False`` but for the last
    one: the same numbers, without the approximate KL and the clip fraction; bad arguments are caught
    by ``update`` itself (its ``UpdateConfig``)."""
    torch.manual_seed(0)
    logp = torch.randn(32, requires_grad=True)
    args = (logp, torch.randn(32), torch.randn(32), torch.randn(32, requires_grad=True), torch.randn(32))
    a = ppo.ppo_loss(*args, eps=0.1)
    b = ppo.ppo_loss(*args, None, 0.1, 1.0, 0.0, diagnostics=False)
    assert b.approx_kl is None and b.clip_fraction is None
    for x, y in zip(a[:4], b[:4]):
        torch.testing.assert_close(x, y, equal_nan=True)
    expected = -ppo.clipped_surrogate(torch.exp(args[0] - args[1]), args[2], 0.1).mean()
    torch.testing.assert_close(a.policy_loss, expected.detach())
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    obs, act = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(ValueError, match="eps"):
        ppo.update(net, make_optimizer(net, 1e-3), obs, act, args[1], args[2], args[4], eps=0.0)
    with pytest.raises(ValueError, match="vf_coef"):
        ppo.update(net, make_optimizer(net, 1e-3), obs, act, args[1], args[2], args[4], vf_coef=-1.0)
    with pytest.raises(ValueError, match="shapes must match"):
        ppo.update(net, make_optimizer(net, 1e-3), obs, act, args[1][:16], args[2], args[4])


def test_update_config_defaults_and_conversion():
    cfg = ppo.UpdateConfig(epochs=3.0, minibatch_size=64.0)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int) and cfg.minibatch_size == 64
    assert cfg.vf_coef == 1.0 and cfg.eps == 0.2 and cfg.max_grad_norm == 0.5
    assert ppo.UpdateConfig(max_grad_norm=None).max_grad_norm is None  # None: no clipping


# ------------------------------------------------------------------------------- bad input

def test_clipped_surrogate_refuses_non_finite_input_by_name():
    with pytest.raises(ValueError, match=r"ratio must be finite \(it holds NaN or inf\)"):
        ppo.clipped_surrogate(torch.tensor([1.0, math.nan]), torch.ones(2), 0.2)  # NaN passed through before
    with pytest.raises(ValueError, match="advantages must be finite"):
        ppo.clipped_surrogate(torch.ones(2), [1.0, math.nan], 0.2)
    with pytest.raises(ValueError, match="ratio must be finite"):
        ppo.clipped_surrogate(torch.tensor([math.inf]), torch.zeros(1), 0.2)  # inf * 0 = NaN before
    # valid neighbours: float64 keeps its dtype, a list equals the tensor
    r64 = torch.tensor([0.5, 1.5], dtype=torch.float64)
    assert ppo.clipped_surrogate(r64, [1.0, 1.0], 0.2).dtype == torch.float64
    torch.testing.assert_close(ppo.clipped_surrogate([0.5, 1.5], [-1.0, 1.0], 0.2),
                               ppo.clipped_surrogate(torch.tensor([0.5, 1.5]), torch.tensor([-1.0, 1.0]), 0.2))


def test_ratio_approx_kl_and_ppo_loss_refuse_non_finite_and_empty_input():
    with pytest.raises(ValueError, match="logp_old must be finite"):
        ppo.ratio(torch.zeros(2), torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="log_ratio must be finite"):
        ppo.approx_kl(torch.tensor([0.1, math.nan]))
    with pytest.raises(ValueError, match="log_ratio must hold at least one sample"):
        ppo.approx_kl(torch.zeros(0))  # nan before
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="advantages must be finite"):
        ppo.ppo_loss(x, x, torch.tensor([0.0, math.nan, 0.0]), x, x)
    with pytest.raises(ValueError, match="returns must be finite"):
        ppo.ppo_loss(x, x, x, x, torch.tensor([0.0, math.inf, 0.0]))
    with pytest.raises(ValueError, match="logp must hold at least one sample"):
        ppo.ppo_loss(*[torch.zeros(0)] * 5)
    # valid neighbours: lists for ratio, a gradient still flows through the checked loss
    torch.testing.assert_close(ppo.ratio([0.0, -1.0], [-1.0, -1.0]), torch.tensor([math.e, 1.0]))
    logp = torch.zeros(3, requires_grad=True)
    ppo.ppo_loss(logp, x, torch.ones(3), x, x).loss.backward()
    assert logp.grad is not None


def test_update_refuses_non_finite_batches():
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    obs, act, n = torch.randn(8, 4), torch.randint(0, 2, (8,)), torch.zeros(8)
    bad = torch.zeros(8)
    bad[3] = math.nan
    with pytest.raises(ValueError, match="advantages must be finite"):
        ppo.update(net, make_optimizer(net, 1e-3), obs, act, n, bad, n, epochs=1)
    with pytest.raises(ValueError, match="obs must be finite"):
        ppo.update(net, make_optimizer(net, 1e-3), obs.masked_fill(obs > 1, math.inf), act, n, n, n, epochs=1)
    assert all(torch.isfinite(p).all() for p in net.parameters())  # nothing was stepped


def test_ppo_update_refuses_an_empty_batch_and_obs_without_one_row_per_action():
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    opt = make_optimizer(net, 1e-3)
    empty = torch.zeros(0)
    with pytest.raises(ValueError, match=r"obs and actions must hold the same number \(>= 1\) of samples, got 0 and 0"):
        ppo.update(net, opt, torch.zeros(0, 4), empty.long(), empty, empty, empty)
    n = torch.zeros(5)
    with pytest.raises(ValueError, match=r"obs and actions must hold the same number \(>= 1\) of samples, got 3 and 5"):
        ppo.update(net, opt, torch.zeros(3, 4), n.long(), n, n, n)


# ------------------------------------------------------------------------------- Ctrl-C inside an update

PPO_RUN = dict(seed=3, epochs=2, minibatch_size=256, anneal_lr=False, anneal_eps=False)  # 4 Adam steps per update


def test_ctrl_c_inside_a_ppo_update_finishes_it_then_stops_with_the_result(monkeypatch, ctrl_c_raises,
                                                                          sigint_on_call):
    handler_before = signal.getsignal(signal.SIGINT)
    closed, steps = [], []
    original_close = rollout.Runner.close
    monkeypatch.setattr(rollout.Runner, "close", lambda self: closed.append(self.envs) or original_close(self))

    def optimizer_sending_sigint(net, lr):  # Ctrl-C at the first Adam step of the second update
        opt = make_optimizer(net, lr)
        opt.step = sigint_on_call(opt.step, 5, steps)
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


def test_epochs_on_one_batch_documents_its_default_of_15_epochs():
    assert ppo.OneBatchConfig(seed=0).epochs == 15
    assert "defaults to 15" in ppo.epochs_on_one_batch.__doc__ and "default 15" in ppo.OneBatchConfig.__doc__


# --- issue 27, round two: arguments named, the caller's global settings, an interrupt at the start ----

@pytest.mark.parametrize("call, match", [
    (lambda: ppo.ratio("a", "b"), r"logp must be a tensor or an array-like of numbers, got str 'a'"),
    (lambda: ppo.ratio(None, None), r"logp must be a tensor or an array-like of numbers, got NoneType None"),
    (lambda: ppo.ratio([0.0], None), r"logp_old must be a tensor or an array-like of numbers, got NoneType"),
    (lambda: ppo.clipped_surrogate(None, torch.ones(1), 0.2), r"ratio must be a tensor or an array-like of numbers"),
    (lambda: ppo.clipped_surrogate(torch.ones(1), "x", 0.2), r"advantages must be a tensor or an array-like"),
    (lambda: ppo.approx_kl("x"), r"log_ratio must be a tensor or an array-like of numbers, got str 'x'"),
    (lambda: ppo.ppo_loss([-1.0], [-1.0], [1.0], [0.0], [0.0]), r"logp must be a torch.Tensor, got list \[-1.0\]"),
    (lambda: ppo.ppo_loss(None, None, None, None, None), r"logp must be a torch.Tensor, got NoneType None"),
    (lambda: ppo.ppo_loss(*(torch.zeros(2),) * 4, None), r"returns must be a torch.Tensor, got NoneType"),
])
def test_formulas_name_an_argument_that_is_not_numbers(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def _small_update(**changes):
    torch.manual_seed(0)
    net = ActorCritic(CategoricalPolicy(4, 2, 8), ValueNet(4, 8))
    args = dict(obs=torch.randn(6, 4), actions=torch.tensor([0, 1, 0, 1, 1, 0]), logp_old=torch.full((6,), -0.69),
                advantages=torch.randn(6), returns=torch.zeros(6))
    return ppo.update(net, make_optimizer(net, 1e-3), **{**args, **changes})


def test_update_names_actions_out_of_range_and_obs_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"actions must be in \[0, 2\) \(the policy's 2 actions\), got 5"):
        _small_update(actions=torch.tensor([0, 1, 5, 1, 1, 0]))
    with pytest.raises(TypeError, match="actions must be a tensor of an integer dtype, got dtype torch.float32"):
        _small_update(actions=torch.tensor([0.0, 1, 0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"obs must be \[batch, 4 \(the network's input width\)\], got shape \(6, 3\)"):
        _small_update(obs=torch.randn(6, 3))


SMALL = dict(total_steps=32, seed=0, num_envs=2, num_steps=8, minibatch_size=16, epochs=1)


def test_ctrl_c_while_the_environments_start_gives_training_interrupted(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "Runner", interrupted)
    with pytest.raises(TrainingInterrupted, match="after 0 complete updates") as stop:
        ppo.train(**SMALL)
    assert stop.value.result.model is None and len(stop.value.result.history) == 0
