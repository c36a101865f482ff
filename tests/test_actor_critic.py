"""rlnotes.actor_critic: PPO's speed engineering, each piece equal to its plain reference."""

import copy

import numpy as np
import torch

from rlnotes import ppo
from rlnotes.actor_critic import ActorCritic, clip_grad_norm, make_optimizer
from rlnotes.nets import CategoricalPolicy, ValueNet


def pair(seed=0, obs_dim=4, n_actions=3):
    torch.manual_seed(seed)
    policy, value_fn = CategoricalPolicy(obs_dim, n_actions), ValueNet(obs_dim)
    with torch.no_grad():
        policy.logits_net[-1].weight.normal_()  # make pi far from uniform
    return policy, value_fn


def test_actor_critic_matches_the_two_networks_and_samples_pi():
    policy, value_fn = pair()
    net = ActorCritic(policy, value_fn)
    obs = torch.randn(16, 4)
    log_probs, values = net(obs)
    torch.testing.assert_close(log_probs, policy.log_probs(obs))
    torch.testing.assert_close(values, value_fn(obs))
    torch.testing.assert_close(net.value(obs), value_fn(obs))
    a, logp, v = net.act(obs)
    torch.testing.assert_close(logp, log_probs.gather(-1, a[:, None]).squeeze(-1).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, values.detach(), atol=1e-5, rtol=1e-5)
    # empirical action frequencies in one state match pi(.|s)
    s = obs[:1].expand(20_000, 4).contiguous()
    freq = np.bincount(net.act(s)[0].numpy(), minlength=3) / 20_000
    np.testing.assert_allclose(freq, log_probs[0].exp().detach().numpy(), atol=0.015)
    # act draws from the generator it is given: the same seed, the same actions
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(net.act(s[:64], generator=g1)[0], net.act(s[:64], generator=g2)[0])
    # changed packed weights go back into the modules
    with torch.no_grad():
        net.w2.add_(0.1)
        net.b_v.add_(1.0)
    p2, v2 = net.unpack()
    assert p2 is policy and v2 is value_fn
    torch.testing.assert_close(p2.log_probs(obs), net(obs)[0])
    torch.testing.assert_close(v2(obs), net(obs)[1])


def test_a_ppo_step_on_the_packed_net_equals_the_step_on_the_plain_networks():
    policy, value_fn = pair(1)
    ref_pi, ref_v = copy.deepcopy(policy), copy.deepcopy(value_fn)
    net = ActorCritic(policy, value_fn)
    obs, actions = torch.randn(32, 4), torch.randint(0, 3, (32,))
    logp_old, adv, ret = torch.randn(32) * 0.1 - 1.1, torch.randn(32), torch.randn(32)
    ref_opt = torch.optim.Adam(list(ref_pi.parameters()) + list(ref_v.parameters()), lr=1e-2, eps=1e-5)
    opt = make_optimizer(net, 1e-2)
    for _ in range(3):
        dist = ref_pi(obs)
        loss = ppo.ppo_loss(dist.log_prob(actions), logp_old, adv, ref_v(obs), ret, dist.entropy(), ent_coef=0.01).loss
        ref_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(ref_pi.parameters()) + list(ref_v.parameters()), 0.5)
        ref_opt.step()
    ppo.update(net, opt, obs, actions, logp_old, adv, ret, epochs=3, minibatch_size=32, ent_coef=0.01,
               normalize_advantages=False)
    p, v = net.unpack()
    for a, b in zip(list(p.parameters()) + list(v.parameters()), list(ref_pi.parameters()) + list(ref_v.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite():
    torch.manual_seed(0)
    net = ActorCritic(CategoricalPolicy(4, 3), ValueNet(4))
    with torch.no_grad():
        net.w_pi.mul_(1e6)
    log_probs, _ = net(torch.randn(5, 4))
    assert torch.isfinite(log_probs).all() and log_probs.min() < -100
    a, logp_a, _ = net.act(torch.randn(5, 4))
    assert torch.isfinite(logp_a).all()


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    for max_norm in (0.5, 1e3):  # clipped, and left alone
        a, b = torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)
        ((a * 3).sum() + (b ** 2).sum()).backward()
        a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        a2.grad, b2.grad = a.grad.clone(), b.grad.clone()
        norm = clip_grad_norm([a, b], max_norm)
        ref = torch.nn.utils.clip_grad_norm_([a2, b2], max_norm)
        torch.testing.assert_close(norm, ref)
        torch.testing.assert_close(a.grad, a2.grad)
        torch.testing.assert_close(b.grad, b2.grad)
    torch.testing.assert_close(torch.cat([a.grad.flatten(), b.grad.flatten()]).norm(), ref)  # unclipped at 1e3


def test_make_optimizer_is_adam_with_eps_1e_5():
    net = ActorCritic(CategoricalPolicy(4, 2), ValueNet(4))
    opt = make_optimizer(net, 3e-3)
    assert isinstance(opt, torch.optim.Adam)
    group = opt.param_groups[0]
    assert group["lr"] == 3e-3 and group["eps"] == 1e-5
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
