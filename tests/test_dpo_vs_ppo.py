"""rlnotes.dpo_vs_ppo: chapter 5's frontier, DPO against RLHF-PPO; one point (measured at the end
and at DPO checkpoints) and many points in one process or in workers."""

import pytest

from rlnotes import dpo_vs_ppo


def test_dpo_ppo_point_measures_dpo_and_ppo_and_a_checkpoint_is_the_shorter_run(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)              # 32 pairs: 4 steps of 8 per epoch
    args = dict(batch_size=8, lr=1e-2)
    long = dpo_vs_ppo.dpo_ppo_point(P, data, "DPO", 0.3, seed=2, epochs=3, checkpoints=(4, 8, 12), eval_data=data, **args)
    short = dpo_vs_ppo.dpo_ppo_point(P, data, "DPO", 0.3, seed=2, epochs=1, eval_data=data, **args)
    assert set(long["eval"]) == set(dpo_vs_ppo.FRONTIER_KEYS) | {"accuracy"} and long["eval"]["n"] == 2 * len(P.eval_prompts)
    assert sorted(long["checkpoints"]) == [4, 8, 12] and long["checkpoints"][4] == short["eval"]
    assert long["checkpoints"][12] == long["eval"]
    assert len(long["history"].updates["loss"]) == 12 and long["config"].epochs == 3
    assert long["history"].updates["loss"][:4] == short["history"].updates["loss"]
    ppo = dpo_vs_ppo.dpo_ppo_point(P, data, "PPO", 0.3, seed=0, steps=1, batch_size=2, epochs=1, n_repeats=1)
    assert set(ppo["eval"]) == set(dpo_vs_ppo.FRONTIER_KEYS) and ppo["checkpoints"] == {} and ppo["config"].steps == 1
    assert ppo["eval"]["r_star/se"] > 0 and ppo["eval"]["n"] == len(P.eval_prompts)


def test_dpo_ppo_point_rejects_bad_input(tiny_prepared):
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    with pytest.raises(ValueError, match="method"):
        dpo_vs_ppo.dpo_ppo_point(P, data, "IPO", 0.1)
    with pytest.raises(ValueError, match="checkpoints"):
        dpo_vs_ppo.dpo_ppo_point(P, data, "PPO", 0.1, checkpoints=(2,), steps=1)
    with pytest.raises(ValueError, match="checkpoints"):
        dpo_vs_ppo.dpo_ppo_point(P, data, "DPO", 0.1, checkpoints=(0,))
    with pytest.raises(ValueError, match=r"1 to 4"):
        dpo_vs_ppo.dpo_ppo_point(P, data, "DPO", 0.1, checkpoints=(5,), epochs=1, batch_size=8)


def test_dpo_ppo_frontier_gives_the_same_numbers_in_worker_processes(tiny_prepared):
    # workers only unpickle the models: the value head of RLHF-PPO must still see hidden states
    P = tiny_prepared
    data = P.train_prefs.encode(P.tokenizer)
    points = [dict(method="PPO", beta=0.2, seed=1, steps=2, batch_size=2, epochs=1, n_repeats=1),
              dict(method="DPO", beta=0.2, seed=3, epochs=2, batch_size=8, checkpoints=(4,), n_repeats=1)]
    here = dpo_vs_ppo.dpo_ppo_frontier(P, data, points, eval_data=data, workers=1)
    there = dpo_vs_ppo.dpo_ppo_frontier(P, data, points, eval_data=data, workers=2)
    for a, b, key in zip(here, there, ("kl/exact_per_sequence", "loss")):
        assert a["eval"] == b["eval"] and a["checkpoints"] == b["checkpoints"]
        assert a["history"].updates[key] == b["history"].updates[key]
    assert "accuracy" in here[1]["eval"] and "accuracy" not in here[0]["eval"]
    with pytest.raises(ValueError, match="method and a beta"):
        dpo_vs_ppo.dpo_ppo_frontier(P, data, [dict(method="DPO")], workers=1)


def test_dpo_ppo_point_names_bad_eval_data(tiny, tiny_prepared):
    _, _, data = tiny
    P = tiny_prepared
    with pytest.raises(TypeError, match="eval_data must be a dict with the tensors .* got list"):   # before training
        dpo_vs_ppo.dpo_ppo_point(P, P.train_prefs.encode(P.tokenizer), "DPO", 0.1, eval_data=[data], batch_size=8)


@pytest.mark.parametrize("points, message", [(None, "points must be a list of dicts .* got NoneType"),
                                             ("DPO", "points must be a list of dicts .* got str"),
                                             (["DPO"], r"points\[0\] must be a dict .* got str")])
def test_dpo_ppo_frontier_names_points(tiny_prepared, points, message):
    P = tiny_prepared
    with pytest.raises(TypeError, match=message):
        dpo_vs_ppo.dpo_ppo_frontier(P, P.train_prefs.encode(P.tokenizer), points, workers=1)
