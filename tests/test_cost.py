import numpy as np
import pytest

from rlnotes import cost, ppo, trpo
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
