import math

import numpy as np
import pytest
import torch

from rlnotes import ppo
from rlnotes.nets import CategoricalPolicy, ValueNet


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
    assert ppo.categorical_kl(old, new).item() == pytest.approx(exact.item(), rel=1e-6)


def test_ppo_loss_terms_and_gradient():
    torch.manual_seed(0)
    n = 8
    logp = torch.randn(n).mul(0.3).sub(1.0).requires_grad_()
    logp_old = logp.detach() + torch.randn(n) * 0.3
    adv, values, returns = torch.randn(n), torch.randn(n, requires_grad=True), torch.randn(n)
    entropy = torch.rand(n)
    out = ppo.ppo_loss(logp, logp_old, adv, values, returns, entropy, eps=0.2, vf_coef=0.5, ent_coef=0.01)
    r = torch.exp(logp.detach() - logp_old)
    l_clip = torch.min(r * adv, r.clamp(0.8, 1.2) * adv).mean()
    v_loss = ((values.detach() - returns) ** 2).mean()
    torch.testing.assert_close(out.policy_loss, -l_clip)
    torch.testing.assert_close(out.value_loss, v_loss)
    torch.testing.assert_close(out.entropy, entropy.mean())
    torch.testing.assert_close(out.loss.detach(), -l_clip + 0.5 * v_loss - 0.01 * entropy.mean())
    torch.testing.assert_close(out.approx_kl, ((r - 1) - r.log()).mean())
    torch.testing.assert_close(out.clip_fraction, ((r - 1).abs() > 0.2).float().mean())
    out.loss.backward()
    # value gradient of 0.5 * mean (V - R)^2 ... times vf_coef: vf_coef * 2 (V - R) / n
    torch.testing.assert_close(values.grad, 0.5 * 2 * (values.detach() - returns) / n)
    # the policy gradient is zero for samples in the flat region
    flat = ((adv > 0) & (r > 1.2)) | ((adv < 0) & (r < 0.8))
    assert torch.all(logp.grad[flat] == 0) and torch.all(logp.grad[~flat] != 0)


def test_ppo_loss_without_entropy_and_bad_arguments():
    x = torch.zeros(3)
    out = ppo.ppo_loss(x, x, x, x, x, None, diagnostics=False)
    assert math.isnan(out.entropy.item()) and out.approx_kl is None
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
    # log-probabilities come from a log-softmax: finite even for logits of size 1e4
    torch.manual_seed(0)
    net = ppo.ActorCritic(CategoricalPolicy(4, 3), ValueNet(4))
    with torch.no_grad():
        net.w_pi.mul_(1e6)
    log_probs, _ = net(torch.randn(5, 4))
    assert torch.isfinite(log_probs).all() and log_probs.min() < -100
    a, logp_a, _ = net.act(torch.randn(5, 4))
    assert torch.isfinite(logp_a).all()


def test_actor_critic_matches_the_two_networks_and_samples_pi():
    torch.manual_seed(0)
    policy, value_fn = CategoricalPolicy(4, 3), ValueNet(4)
    with torch.no_grad():
        policy.logits_net[-1].weight.normal_()  # make pi far from uniform
    net = ppo.ActorCritic(policy, value_fn)
    obs = torch.randn(16, 4)
    log_probs, values = net(obs)
    torch.testing.assert_close(log_probs, policy.log_probs(obs))
    torch.testing.assert_close(values, value_fn(obs))
    a, logp, v = net.act(obs)
    torch.testing.assert_close(logp, log_probs.gather(-1, a[:, None]).squeeze(-1).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, values.detach(), atol=1e-5, rtol=1e-5)
    # empirical action frequencies in one state match pi(.|s)
    s = obs[:1].expand(20_000, 4).contiguous()
    freq = np.bincount(net.act(s)[0].numpy(), minlength=3) / 20_000
    np.testing.assert_allclose(freq, log_probs[0].exp().detach().numpy(), atol=0.015)
    # changed packed weights go back into the modules
    with torch.no_grad():
        net.w2.add_(0.1)
        net.b_v.add_(1.0)
    p2, v2 = net.unpack()
    torch.testing.assert_close(p2.log_probs(obs), net(obs)[0])
    torch.testing.assert_close(v2(obs), net(obs)[1])


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    a, b = torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)
    ((a * 3).sum() + (b ** 2).sum()).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    norm = ppo.clip_grad_norm([a, b], 0.5)
    ref = torch.cat([ga.flatten(), gb.flatten()]).norm()
    torch.testing.assert_close(norm, ref)
    torch.testing.assert_close(torch.cat([a.grad.flatten(), b.grad.flatten()]).norm(), torch.tensor(0.5), rtol=1e-4, atol=1e-6)


def test_update_many_epochs_moves_policy_and_clipping_limits_ratio_growth():
    torch.manual_seed(0)
    net = ppo.ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    obs = torch.randn(64, 4)
    with torch.no_grad():
        a, logp_old, _ = net.act(obs)
        old = net(obs)[0]
    adv, ret = torch.randn(64), torch.randn(64)
    stats = ppo.update(net, ppo.make_optimizer(net, 3e-3), obs, a, logp_old, adv, ret, epochs=5,
                       minibatch_size=16, eps=0.2)
    assert set(stats) >= {"loss", "policy_loss", "value_loss", "approx_kl", "clip_fraction", "entropy"}
    assert ppo.categorical_kl(old, net(obs)[0]).item() > 0


def test_train_runs_logs_and_is_deterministic():
    kw = dict(total_steps=512, seed=1, num_envs=2, num_steps=32, epochs=2, minibatch_size=32, lr=1e-3)
    h1, h2 = ppo.train("CartPole-v1", **kw), ppo.train("CartPole-v1", **kw)
    assert len(h1.update_array("kl")) == 8
    for name in ["env_steps", "kl", "approx_kl", "clip_fraction", "policy_loss", "value_loss", "entropy", "lr",
                 "eps", "ratio_min", "ratio_max", "seconds"]:
        assert len(h1.update_array(name)) == 8, name
    np.testing.assert_array_equal(h1.update_array("kl"), h2.update_array("kl"))
    np.testing.assert_array_equal(h1.episode_returns, h2.episode_returns)
    # linear annealing from lr and eps towards 0
    np.testing.assert_allclose(h1.update_array("lr"), 1e-3 * (1 - np.arange(8) / 8))
    np.testing.assert_allclose(h1.update_array("eps"), 0.2 * (1 - np.arange(8) / 8))
    assert isinstance(h1.policy, CategoricalPolicy) and isinstance(h1.value_fn, ValueNet)


def test_train_other_discrete_environment():
    h = ppo.train("Acrobot-v1", total_steps=256, seed=0, num_envs=2, num_steps=64, epochs=1, minibatch_size=64)
    assert h.policy.logits_net[-1].out_features == 3
    assert np.isfinite(h.update_array("kl")).all()


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
    out = ppo.epochs_on_one_batch(**kw)
    assert set(out) == {"kl", "outside", "ratio_max"} and all(len(v) == 3 for v in out.values())
    assert np.all(out["kl"] >= 0) and out["kl"][-1] > 0 and np.all((out["outside"] >= 0) & (out["outside"] <= 1))
    np.testing.assert_array_equal(out["kl"], ppo.epochs_on_one_batch(**kw)["kl"])


def test_train_stop_return_stops_once_the_moving_mean_reaches_it():
    h = ppo.train("CartPole-v1", total_steps=4096, seed=0, num_envs=4, num_steps=16, epochs=1, minibatch_size=64,
                  stop_return=15.0)
    reached = h.steps_to_reach(15.0)
    assert reached < 4096 and h.update_array("env_steps")[-1] - reached < 64  # stopped in that iteration


def test_ppo_loss_unchecked_path_matches_the_checked_one():
    """``update`` calls ``ppo_loss(check=False)`` per minibatch: same numbers, and bad arguments are
    still caught once, by ``update`` itself."""
    torch.manual_seed(0)
    logp = torch.randn(32, requires_grad=True)
    args = (logp, torch.randn(32), torch.randn(32), torch.randn(32, requires_grad=True), torch.randn(32))
    a, b = ppo.ppo_loss(*args, eps=0.1), ppo.ppo_loss(*args, eps=0.1, check=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, equal_nan=True)
    expected = -ppo.clipped_surrogate(torch.exp(args[0] - args[1]), args[2], 0.1).mean()
    torch.testing.assert_close(a.policy_loss, expected.detach())
    net = ppo.ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    obs, act = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(ValueError, match="eps"):
        ppo.update(net, ppo.make_optimizer(net, 1e-3), obs, act, args[1], args[2], args[4], eps=0.0)
    with pytest.raises(ValueError, match="shapes must match"):
        ppo.update(net, ppo.make_optimizer(net, 1e-3), obs, act, args[1][:16], args[2], args[4])
