import pytest

from rlnotes import pg, seeds

KEYS = ("env_steps", "kl/exact_per_state", "entropy", "loss/value")  # all but the wall-clock seconds


def test_parallel_seeds_equal_seed_by_seed_runs():
    kwargs = dict(total_steps=1_024, num_envs=4, num_steps=32, lr=3e-3)
    both = seeds.train_seeds(pg.train, [3, 1], workers=2, **kwargs)
    assert list(both) == [3, 1]
    for seed, result in both.items():
        alone = pg.train(seed=seed, **kwargs)
        assert result.model is None and result.value_fn is None   # networks stripped by default
        assert result.config == alone.config
        assert all(result.history.updates[k] == alone.history.updates[k] for k in KEYS)
        assert list(result.history.episode_returns) == list(alone.history.episode_returns)


def test_one_worker_keeps_models_when_asked_and_restores_threads():
    import torch

    threads = torch.get_num_threads()
    out = seeds.train_seeds(pg.train, [0], workers=1, keep_models=True, total_steps=256, num_envs=2,
                            num_steps=16)
    assert out[0].model is not None and torch.get_num_threads() == threads


@pytest.mark.parametrize("bad, kwargs, error, message", [
    ([], {}, ValueError, "non-empty"),
    ([1, 1], {}, ValueError, "distinct"),
    ([-1], {}, ValueError, "seeds must be >= 0"),
    ([0], {"seed": 0}, TypeError, "pass the seeds as `seeds`"),
    ([0], {"workers": 0}, ValueError, "workers must be >= 1"),
])
def test_bad_arguments_are_named(bad, kwargs, error, message):
    with pytest.raises(error, match=message):
        seeds.train_seeds(pg.train, bad, total_steps=256, **kwargs)

