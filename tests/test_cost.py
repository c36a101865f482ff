import copy

import numpy as np
import pytest
import torch

from rlnotes import cost, dpo, lm, ppo, rlhf, sampling, trpo
from rlnotes.trainer import History


def test_trpo_passes_from_a_log():
    h = History()
    h.log(cg_iters=10, backtracks=0, accepted=1.0)   # full step accepted: 1 trial
    h.log(cg_iters=7, backtracks=3, accepted=1.0)    # 4th trial accepted
    h.log(cg_iters=10, backtracks=10, accepted=0.0)  # all 10 trials rejected
    p = cost.trpo_passes(h, vf_iters=5)
    np.testing.assert_array_equal(p["line_search"], [1, 4, 10])
    np.testing.assert_array_equal(p["forward"], [3, 6, 12])
    np.testing.assert_array_equal(p["hvp"], [11, 8, 11])
    np.testing.assert_array_equal(p["backward"], [2, 2, 2])
    np.testing.assert_array_equal(p["value"], [5, 5, 5])


def test_trpo_passes_match_a_real_run():
    h = trpo.train("CartPole-v1", total_steps=1024, seed=0).history
    p = cost.trpo_passes(h)
    assert len(p["cg_iters"]) == 2 and (p["cg_iters"] >= 1).all() and (p["cg_iters"] <= 10).all()
    assert ((p["line_search"] >= 1) & (p["line_search"] <= 10)).all()


def test_ppo_passes():
    p = cost.ppo_passes(ppo.PPOConfig(total_steps=1, seed=0))
    assert p["forward"] == p["backward"] == 15 * 2 and p["hvp"] == 0 and p["minibatches"] == 2
    p = cost.ppo_passes(ppo.PPOConfig(total_steps=1, seed=0, epochs=4, minibatch_size=200))
    assert p["minibatches"] == 3 and p["forward"] == 12           # 512 samples: 200 + 200 + 112


def test_one_update_each_counts_agree_with_the_formulas():
    out = cost.one_update_each(seed=1, repeats=1)
    t, p = out["TRPO"], out["PPO"]
    # trpo_step: 2 + m forward; g, grad KL, k CG products and s^T F s backward
    assert t["forward"] == 2 + t["line_search"] and t["backward"] == 2 + t["cg_iters"] + 1
    assert t["value_forward"] == t["value_backward"] == trpo.TRPOConfig(total_steps=1, seed=0).vf_iters
    expected = cost.ppo_passes(ppo.PPOConfig(total_steps=1, seed=0))
    assert p["forward"] == expected["forward"] and p["backward"] == expected["backward"]
    assert t["seconds"] > 0 and p["seconds"] > 0


def test_errors():
    with pytest.raises(ValueError, match="TRPO"):
        cost.trpo_passes(_ppo_like_history())
    with pytest.raises(TypeError, match="config"):
        cost.ppo_passes(trpo.TRPOConfig(total_steps=1, seed=0))
    with pytest.raises(ValueError, match="repeats"):
        cost.one_update_each(repeats=0)
    with pytest.raises(ValueError, match="vf_iters"):
        cost.trpo_passes(History(), vf_iters=0)


def _ppo_like_history():
    h = History()
    h.log({"kl/exact_per_state": 0.01, "eps": 0.2})
    return h


def test_train_side_by_side_equals_runs_one_by_one():
    from rlnotes import pg
    settings = {"PPO": (ppo.train, dict(total_steps=512, num_envs=4, num_steps=32, epochs=2)),
                "PG": (pg.train, dict(total_steps=512, num_envs=4, num_steps=32))}
    for workers in (1, 2):
        out = cost.train_side_by_side(settings, [2, 0], workers=workers)
        assert list(out) == ["PPO", "PG"] and all(len(hs) == 2 for hs in out.values())
        for name, (train, kwargs) in settings.items():
            for seed, h in zip([2, 0], out[name]):
                alone = train(seed=seed, **kwargs).history
                for key in ("env_steps", "kl/exact_per_state", "entropy"):
                    assert h.updates[key] == alone.updates[key], (workers, name, seed, key)
                assert list(h.episode_returns) == list(alone.episode_returns)


@pytest.mark.parametrize("settings, seeds, kwargs, error, message", [
    ({"PPO": (ppo.train, {})}, [], {}, ValueError, "non-empty"),
    ({"PPO": (ppo.train, {})}, [1, 1], {}, ValueError, "distinct"),
    ({}, [0], {}, TypeError, "non-empty mapping"),
    ({"PPO": (ppo.train, {"seed": 0})}, [0], {}, TypeError, "no 'seed'"),
    ({"PPO": (ppo.train, {})}, [0], {"workers": 0}, ValueError, "workers must be >= 1"),
])
def test_train_side_by_side_names_bad_arguments(settings, seeds, kwargs, error, message):
    with pytest.raises(error, match=message):
        cost.train_side_by_side(settings, seeds, **kwargs)


# ----- count_passes ---------------------------------------------------------------------------------

def test_count_passes_counts_forward_backward_and_decoding(tok, model):
    policy = copy.deepcopy(model).requires_grad_(True)
    head = torch.nn.Linear(4, 1)
    p_ids, p_mask = lm.encode_prompts(tok, ["the movie was", "the plot"])
    r_ids, r_mask = lm.encode_responses(tok, ["good .", "bad"])
    with cost.count_passes(model) as c:
        logp = lm.sequence_logprob(policy, p_ids, p_mask, r_ids, r_mask)       # one pass, with a gradient
        logp.sum().backward()
        with torch.no_grad():
            lm.sequence_logprob(model, p_ids, p_mask, r_ids, r_mask)           # the reference, no gradient
            ids, _ = sampling.sample(policy, tok, p_ids, p_mask, 4, generator=torch.Generator().manual_seed(0))
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
    with cost.count_passes(P.sft, P.reward_model) as c, torch.no_grad():
        P.reward_model(p_ids, p_mask, r_ids, r_mask)        # a GPT-2 body and a linear head inside
    assert c["reward model"]["forward"] == 1 and c["policy"]["forward"] == 0 and c["value head"]["forward"] == 0


# ----- update_work ----------------------------------------------------------------------------------

def test_update_work_counts_what_each_method_computes(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    ppo_cfg = rlhf.RLHFConfig(batch_size=8, epochs=2, minibatch_size=4)
    work = cost.update_work(P, data, ppo_config=ppo_cfg, dpo_config=dpo.DPOConfig(batch_size=8))
    ppo, d = work["RLHF-PPO"]["per_update"], work["DPO"]["per_update"]
    steps = ppo_cfg.epochs * 2                                      # epochs x minibatches per batch
    assert ppo["policy"]["backward"] == steps and ppo["policy"]["forward"] == 1 + steps
    assert ppo["value head"]["backward"] == steps and ppo["value head"]["forward"] == 1 + steps
    assert ppo["reference"]["forward"] == 1 and ppo["reward model"]["forward"] == 1
    assert ppo["reference"]["backward"] == 0 and ppo["reward model"]["backward"] == 0
    assert 1 <= ppo["policy"]["decode_steps"] <= P.task.max_response_tokens
    assert 8 <= ppo["policy"]["tokens_decoded"] <= 8 * P.task.max_response_tokens
    assert d["policy"]["forward"] == 1 and d["policy"]["backward"] == 1
    assert all(d[role][k] == 0 for role in ("value head", "reference", "reward model") for k in cost.WORK_KEYS)
    assert d["policy"]["decode_steps"] == d["policy"]["tokens_decoded"] == 0
    assert work["DPO"]["once"]["reference"]["forward"] == 1                 # the reference log-probs, once
    assert work["RLHF-PPO"]["once"]["reference"]["forward"] == 0
    assert d["value head"]["networks"] == d["reward model"]["networks"] == 0
    assert all(ppo[role]["networks"] == 1 for role in cost.ROLES)


def test_update_work_rejects_bad_input(tiny_prepared):
    data = tiny_prepared.train_prefs.encode(tiny_prepared.tokenizer)
    with pytest.raises(ValueError, match="n_updates"):
        cost.update_work(tiny_prepared, data, n_updates=0)
    with pytest.raises(ValueError, match="at least batch_size"):
        cost.update_work(tiny_prepared, data)                     # 64 x 3 pairs needed, 32 given
    with pytest.raises(ValueError, match="data must be a dict"):
        cost.update_work(tiny_prepared, {"prompt_ids": data["prompt_ids"]})


def test_count_passes_refuses_a_ref_that_is_not_a_model():
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module"):
        with cost.count_passes(None):
            pass


def test_networks_run_fold_the_value_head_into_the_policy_and_work_per_progress():
    zero = dict(forward=0, backward=0, decode_steps=0)
    ppo_like = {"policy": dict(zero, forward=4, backward=4, decode_steps=8), "value head": dict(zero, forward=4),
                "reference": dict(zero, forward=1), "reward model": dict(zero, forward=1)}
    dpo_like = {"policy": dict(zero, forward=1, backward=1), "value head": zero, "reference": zero,
                "reward model": zero}
    assert cost.networks_run(ppo_like) == ["policy", "reference", "reward model"]
    assert cost.networks_run(dpo_like) == ["policy"]
    assert cost.passes_per_update(ppo_like) == 14 and cost.passes_per_update(dpo_like) == 2
    assert cost.work_per_progress(14, 100, 0.5) == 2800 and cost.work_per_progress(2, 72, 0.0) == float("inf")
    with pytest.raises(ValueError, match="updates must be >= 1"):
        cost.work_per_progress(2, 0, 1.0)


def test_train_side_by_side_runs_on_a_started_pool_and_leaves_it_open():
    from rlnotes import parallel, pg

    kwargs = dict(env_id="CartPole-v1", total_steps=256, num_envs=2, num_steps=64)
    with parallel.Pool(1) as pool:
        got = cost.train_side_by_side({"a": (pg.train, kwargs)}, [1], workers=pool)
        again = cost.train_side_by_side({"a": (pg.train, kwargs)}, [1], workers=pool)
    alone = pg.train(seed=1, **kwargs).history
    for out in (got, again):
        assert out["a"][0].update_array("entropy").tolist() == alone.update_array("entropy").tolist()
