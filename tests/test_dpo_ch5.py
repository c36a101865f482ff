"""Chapter 5's additions to rlnotes.dpo: DPO on a one-token model (``fit_categorical``), the
work of one update counted network by network (``count_passes``, ``update_work``), and the
reward-KL frontier over seeds (``frontier_point``, ``frontier``)."""

import copy

import numpy as np
import pytest
import torch

from rlnotes import dpo, lm, rlhf
from rlnotes.dpo import count_passes, fit_categorical, optimal_policy, update_work


# ----- fit_categorical -------------------------------------------------------------------------

def _labelled_pairs(seed=0, K=5, N=20_000):
    g = np.random.default_rng(seed)
    ref, r = g.dirichlet(2 * np.ones(K)), g.standard_normal(K)
    y1, y2 = g.choice(K, N, p=ref), g.choice(K, N, p=ref)
    first = g.random(N) < 1 / (1 + np.exp(-(r[y1] - r[y2])))
    return ref, r, np.where(first, y1, y2), np.where(first, y2, y1)


def test_fit_categorical_recovers_the_optimal_policy():
    ref, r, y_w, y_l = _labelled_pairs()
    for beta in (0.5, 2.0):
        probs = fit_categorical(ref, y_w, y_l, beta, epochs=5, batch_size=500, lr=0.05)
        assert probs.shape == (5 * 40, 5) and np.allclose(probs.sum(1), 1)
        target = optimal_policy(ref, r, beta)
        tv = 0.5 * np.abs(probs - target).sum(1)
        assert tv[-1] < 0.03 and tv[-1] < 0.5 * (0.5 * np.abs(ref - target).sum())


def test_fit_categorical_is_seeded_and_starts_at_the_reference():
    ref, _, y_w, y_l = _labelled_pairs(1, N=2000)
    a = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=3)
    b = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=3)
    c = fit_categorical(ref, y_w, y_l, 1.0, epochs=1, batch_size=100, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # no preference at all (each pair once each way): the first step's gradient is 0, pi stays pi_ref
    same = fit_categorical(ref, np.array([0, 1]), np.array([1, 0]), 1.0, epochs=1, batch_size=2)
    assert np.allclose(same[0], ref, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ref_probs=[0.5, 0.6]), "ref_probs"),
    (dict(ref_probs=[1.0]), "ref_probs"),
    (dict(winners=[0, 1], losers=[1]), "winners and losers"),
    (dict(winners=[0.0], losers=[1.0]), "winners and losers"),
    (dict(winners=[0], losers=[3]), r"\[0, 1\]"),
    (dict(beta=0.0), "beta"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(seed=-1), "seed"),
])
def test_fit_categorical_rejects_bad_input(kwargs, match):
    args = dict(ref_probs=[0.5, 0.5], winners=[0], losers=[1], beta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_categorical(args.pop("ref_probs"), args.pop("winners"), args.pop("losers"), args.pop("beta"), **args)


# ----- count_passes --------------------------------------------------------------------------------

def test_count_passes_counts_forward_backward_and_decoding(tok, model):
    policy = copy.deepcopy(model).requires_grad_(True)
    head = torch.nn.Linear(4, 1)
    p_ids, p_mask = lm.encode_prompts(tok, ["the movie was", "the plot"])
    r_ids, r_mask = lm.encode_responses(tok, ["good .", "bad"])
    with count_passes(model) as c:
        logp = lm.sequence_logprob(policy, p_ids, p_mask, r_ids, r_mask)       # one pass, with a gradient
        logp.sum().backward()
        with torch.no_grad():
            lm.sequence_logprob(model, p_ids, p_mask, r_ids, r_mask)           # the reference, no gradient
            ids, _ = lm.sample(policy, tok, p_ids, p_mask, 4, generator=torch.Generator().manual_seed(0))
        head(torch.zeros(3, 4)).sum().backward()
    assert c["policy"]["forward"] == 1 and c["policy"]["backward"] == 1
    assert 1 <= c["policy"]["decode_steps"] <= 4 and c["policy"]["decode_steps"] >= ids.shape[1]
    assert c["policy"]["tokens_decoded"] >= 2 * ids.shape[1] - 2     # rows that finished may leave the batch
    assert c["reference"] == {**c["reference"], "forward": 1, "backward": 0, "decode_steps": 0, "networks": 1}
    assert c["value head"]["forward"] == 1 and c["value head"]["backward"] == 1 and c["value head"]["parameters"] == 5
    assert c["policy"]["networks"] == 1 and c["policy"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert c["reward model"]["forward"] == 0
    lm.sequence_logprob(policy, p_ids, p_mask, r_ids, r_mask)                  # after the block: not counted
    assert c["policy"]["forward"] == 1


def test_count_passes_nested_calls_belong_to_the_outer_network(tiny_prepared):
    P = tiny_prepared
    p_ids, p_mask = lm.encode_prompts(P.tokenizer, ["the movie was"])
    r_ids, r_mask = lm.encode_responses(P.tokenizer, ["good ."])
    with count_passes(P.sft, P.reward_model) as c, torch.no_grad():
        P.reward_model(p_ids, p_mask, r_ids, r_mask)        # a GPT-2 body and a linear head inside
    assert c["reward model"]["forward"] == 1 and c["policy"]["forward"] == 0 and c["value head"]["forward"] == 0


# ----- update_work -------------------------------------------------------------------------------

def test_update_work_counts_what_each_method_computes(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    ppo_cfg = rlhf.RLHFConfig(batch_size=8, epochs=2, minibatch_size=4)
    work = update_work(P, data, ppo_config=ppo_cfg, dpo_config=dpo.DPOConfig(batch_size=8))
    ppo, d = work["RLHF-PPO"]["per_update"], work["DPO"]["per_update"]
    steps = ppo_cfg.epochs * 2                                      # epochs x minibatches per batch
    assert ppo["policy"]["backward"] == steps and ppo["policy"]["forward"] == 1 + steps
    assert ppo["value head"]["backward"] == steps and ppo["value head"]["forward"] == 1 + steps
    assert ppo["reference"]["forward"] == 1 and ppo["reward model"]["forward"] == 1
    assert ppo["reference"]["backward"] == 0 and ppo["reward model"]["backward"] == 0
    assert 1 <= ppo["policy"]["decode_steps"] <= P.task.max_response_tokens
    assert 8 <= ppo["policy"]["tokens_decoded"] <= 8 * P.task.max_response_tokens
    assert d["policy"]["forward"] == 1 and d["policy"]["backward"] == 1
    assert all(d[role][k] == 0 for role in ("value head", "reference", "reward model") for k in dpo.WORK_KEYS)
    assert d["policy"]["decode_steps"] == d["policy"]["tokens_decoded"] == 0
    assert work["DPO"]["once"]["reference"]["forward"] == 1                 # the reference log-probs, once
    assert work["RLHF-PPO"]["once"]["reference"]["forward"] == 0
    assert d["value head"]["networks"] == d["reward model"]["networks"] == 0
    assert all(ppo[role]["networks"] == 1 for role in dpo.ROLES)


def test_update_work_rejects_bad_input(tiny_prepared):
    data = tiny_prepared.train_prefs.encode(tiny_prepared.tokenizer)
    with pytest.raises(ValueError, match="n_updates"):
        update_work(tiny_prepared, data, n_updates=0)
    with pytest.raises(ValueError, match="at least batch_size"):
        update_work(tiny_prepared, data)                     # 64 x 3 pairs needed, 32 given
    with pytest.raises(ValueError, match="data must be a dict"):
        update_work(tiny_prepared, {"prompt_ids": data["prompt_ids"]})


# ----- rlhf_objective ------------------------------------------------------------------------------

def test_rlhf_objective_is_the_formula_and_peaks_at_beta_log_z():
    g = np.random.default_rng(0)
    ref, r = g.dirichlet(np.ones(6), size=3), g.normal(size=(3, 6))
    beta = 0.7
    pis = g.dirichlet(np.ones(6), size=(50, 3))
    direct = (pis * r).sum(-1) - beta * (pis * np.log(pis / ref)).sum(-1)
    np.testing.assert_allclose(dpo.rlhf_objective(pis, ref, r, beta), direct, rtol=1e-12, atol=1e-12)
    star = optimal_policy(ref, r, beta)
    at_star = dpo.rlhf_objective(star, ref, r, beta)
    np.testing.assert_allclose(at_star, beta * dpo.log_partition(ref, r, beta), rtol=1e-12)   # the maximum, beta log Z
    assert (at_star[None] > dpo.rlhf_objective(pis, ref, r, beta)).all()


def test_rlhf_objective_zero_probabilities_and_torch():
    ref, r = np.array([0.5, 0.5]), np.array([1.0, -1.0])
    # all mass on the first response: E[r] = 1, KL = log 2
    assert np.isclose(dpo.rlhf_objective([1.0, 0.0], ref, r, 0.5), 1.0 - 0.5 * np.log(2))
    pi = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    val = dpo.rlhf_objective(pi, ref, r, 0.5)
    (grad,) = torch.autograd.grad(val, pi)
    assert torch.is_tensor(val) and torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.numpy(), r - 0.5 * (np.log(pi.detach().numpy() / ref) + 1), rtol=1e-12)


@pytest.mark.parametrize("pi, match", [([0.5, 0.5, 0.0], "policy_probs must end"), ([1.5, -0.5], "policy_probs must be >= 0")])
def test_rlhf_objective_rejects_bad_input(pi, match):
    with pytest.raises(ValueError, match=match):
        dpo.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo.rlhf_objective([0.5, 0.5], [0.5, 0.5], [0.0, 1.0], 0.0)


def test_rlhf_objective_gradient_finite_where_pi_is_zero():
    pi = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    val = dpo.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    assert torch.isclose(val, torch.tensor(1.0 - np.log(2), dtype=torch.float64))
    (grad,) = torch.autograd.grad(val, pi)
    assert not torch.isnan(grad).any()
    # a response the reference never writes: infinite KL if the policy writes it, nothing if it does not
    assert np.isinf(dpo.rlhf_objective([0.5, 0.5], [1.0, 0.0], [0.0, 0.0], 1.0))
    assert dpo.rlhf_objective([1.0, 0.0], [1.0, 0.0], [0.0, 0.0], 1.0) == 0.0


# ----- the reward-KL frontier over seeds (frontier_point, frontier) ----------------------------------

def test_train_reuses_given_reference_logps(tiny):
    model, _, data = tiny
    ref = dpo.reference_logps(model, data)
    a = dpo.train(None, model, data, beta=0.5, epochs=2, batch_size=4, seed=1).history.updates
    b = dpo.train(None, model, data, beta=0.5, epochs=2, batch_size=4, seed=1, ref_logps=ref).history.updates
    assert a["loss"] == b["loss"] and a["rewards/margins"] == b["rewards/margins"]
    with pytest.raises(ValueError, match="ref_logps"):
        dpo.train(None, model, data, ref_logps=(ref[0][:3], ref[1][:3]))


def test_frontier_point_measures_dpo_and_ppo_and_a_checkpoint_is_the_shorter_run(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)              # 32 pairs: 4 steps of 8 per epoch
    args = dict(batch_size=8, lr=1e-2)
    long = dpo.frontier_point(P, data, "DPO", 0.3, seed=2, epochs=3, checkpoints=(4, 8, 12), eval_data=data, **args)
    short = dpo.frontier_point(P, data, "DPO", 0.3, seed=2, epochs=1, eval_data=data, **args)
    assert set(long["eval"]) == set(dpo.FRONTIER_KEYS) | {"accuracy"} and long["eval"]["n"] == 2 * len(P.eval_prompts)
    assert sorted(long["checkpoints"]) == [4, 8, 12] and long["checkpoints"][4] == short["eval"]
    assert long["checkpoints"][12] == long["eval"]
    assert len(long["history"].updates["loss"]) == 12 and long["config"].epochs == 3
    assert long["history"].updates["loss"][:4] == short["history"].updates["loss"]
    ppo = dpo.frontier_point(P, data, "PPO", 0.3, seed=0, steps=1, batch_size=2, epochs=1, n_repeats=1)
    assert set(ppo["eval"]) == set(dpo.FRONTIER_KEYS) and ppo["checkpoints"] == {} and ppo["config"].steps == 1
    assert ppo["eval"]["r_star/se"] > 0 and ppo["eval"]["n"] == len(P.eval_prompts)


def test_frontier_point_rejects_bad_input(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    with pytest.raises(ValueError, match="method"):
        dpo.frontier_point(P, data, "IPO", 0.1)
    with pytest.raises(ValueError, match="checkpoints"):
        dpo.frontier_point(P, data, "PPO", 0.1, checkpoints=(2,), steps=1)
    with pytest.raises(ValueError, match="checkpoints"):
        dpo.frontier_point(P, data, "DPO", 0.1, checkpoints=(0,))
    with pytest.raises(ValueError, match=r"1 to 4"):
        dpo.frontier_point(P, data, "DPO", 0.1, checkpoints=(5,), epochs=1, batch_size=8)


def test_frontier_gives_the_same_numbers_in_worker_processes(tiny_prepared):
    # workers only unpickle the models: the value head of RLHF-PPO must still see hidden states
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    points = [dict(method="PPO", beta=0.2, seed=1, steps=2, batch_size=2, epochs=1, n_repeats=1),
              dict(method="DPO", beta=0.2, seed=3, epochs=2, batch_size=8, checkpoints=(4,), n_repeats=1)]
    here = dpo.frontier(P, data, points, eval_data=data, workers=1)
    there = dpo.frontier(P, data, points, eval_data=data, workers=2)
    for a, b, key in zip(here, there, ("kl/exact_per_sequence", "loss")):
        assert a["eval"] == b["eval"] and a["checkpoints"] == b["checkpoints"]
        assert a["history"].updates[key] == b["history"].updates[key]
    assert "accuracy" in here[1]["eval"] and "accuracy" not in here[0]["eval"]
    with pytest.raises(ValueError, match="method and a beta"):
        dpo.frontier(P, data, [dict(method="DPO")], workers=1)
