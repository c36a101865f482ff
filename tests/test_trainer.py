"""rlnotes.trainer: the History a run records, read back through windows of episodes; the Config
every trainer fills (whole floats run as counts, None only where a field is optional)."""

import math

import numpy as np
import pytest
import torch

from rlnotes import models, pg, ppo, sft
from rlnotes.trainer import History, trainable_copy


@pytest.fixture
def history():
    h = History()
    for i, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        h.add_episode(10 * (i + 1), r)
    return h


@pytest.mark.parametrize("call", [
    lambda h, w: h.final_mean_return(window=w),
    lambda h, w: h.moving_mean(w),
    lambda h, w: h.steps_to_reach(2.0, window=w),
    lambda h, w: h.curve(np.array([15, 45]), window=w),
])
def test_every_window_must_be_a_positive_int(history, call):
    # before: window=0 gave the mean of all episodes (final_mean_return) or all NaN (moving_mean),
    # window=-2 a slice of the first episodes
    for window in (0, -2):
        with pytest.raises(ValueError, match=f"window must be >= 1, got {window}"):
            call(history, window)
    for window in (True, 2.5, "20"):
        with pytest.raises(TypeError, match="window must be an integer"):
            call(history, window)


def test_windows_give_the_means_of_the_last_episodes(history):
    assert history.final_mean_return(2) == 3.5 and history.final_mean_return(2.0) == 3.5  # 2.0 runs as 2
    assert history.final_mean_return(np.int64(10)) == 2.5  # longer than the run: all episodes
    np.testing.assert_allclose(history.moving_mean(2), [1.0, 1.5, 2.5, 3.5])
    assert history.steps_to_reach(2.5, window=2) == 30.0 and history.steps_to_reach(5.0, window=2) == math.inf
    np.testing.assert_allclose(history.curve(np.array([5, 15, 45]), window=2), [np.nan, 1.0, 3.5])
    assert math.isnan(History().final_mean_return())


def test_threshold_grid_and_logged_values_are_checked(history):
    with pytest.raises(ValueError, match="threshold must be finite, got nan"):
        history.steps_to_reach(math.nan)  # "never reached" (inf) before
    with pytest.raises(ValueError, match="grid must hold finite numbers"):
        history.curve(np.array([15.0, np.nan]))  # the last episode's mean at NaN before
    h = History()
    with pytest.raises(TypeError, match="metric 'loss' must be one number, got tensor"):
        h.log(loss=torch.ones(2))
    with pytest.raises(TypeError, match="metric 'kl/exact_per_state' must be one number, got 'big'"):
        h.log({"kl/exact_per_state": "big"})
    h.log({"kl/exact_per_state": torch.tensor(0.5)}, loss=np.float32(2.0), entropy=math.nan)
    assert h.updates["kl/exact_per_state"] == [0.5] and h.updates["loss"] == [2.0] and len(h) == 1
    assert math.isnan(h.updates["entropy"][0])  # a NaN metric (no entropy) is still one number


# ----- Config: the checks every trainer's configuration makes ---------------------------------------

def test_whole_floats_are_accepted_where_counts_are_expected(tiny_prepared):
    out = pg.train(total_steps=128, seed=0, num_envs=2, num_steps=64.0)
    assert out.config.num_steps == 64 and type(out.config.num_steps) is int and len(out.history) == 1
    task, tok = tiny_prepared.task, tiny_prepared.tokenizer
    xs, ys = task.sft_corpus(8, seed=0)
    model = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0)
    run = sft.train((xs, ys), model=model, tokenizer=tok, steps=300.0, batch_size=1, lr=1e-3)
    assert run.config.steps == 300 and type(run.config.steps) is int and len(run.history) == 300
    with pytest.raises(TypeError, match="steps must be an integer, got 300.5"):
        sft.train((xs, ys), model=model, tokenizer=tok, steps=300.5)


def test_none_is_refused_where_a_field_is_not_optional():
    # seed, total_steps ... must be given; only fields typed ``X | None`` take None ("off")
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        pg.train("CartPole-v1", total_steps=512, seed=None)
    with pytest.raises(TypeError, match="lr must be a number, got None"):
        ppo.train("CartPole-v1", total_steps=512, seed=0, lr=None)
    assert ppo.UpdateConfig(max_grad_norm=None).max_grad_norm is None


def test_training_scope_turns_gradients_on_and_float32_and_restores_both():
    from rlnotes.trainer import training_scope
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad(), training_scope(0):
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert torch.get_default_dtype() == torch.float32
            x = torch.randn(3)
            w = torch.ones(3, requires_grad=True)
            (w * x).sum().backward()
            assert torch.equal(w.grad, x)
        assert torch.get_default_dtype() == torch.float64 and torch.is_grad_enabled()
        with torch.inference_mode():
            with training_scope(0):
                assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    finally:
        torch.set_default_dtype(torch.float32)
    with training_scope(5):
        a = torch.rand(2)
    with training_scope(5):
        assert torch.equal(a, torch.rand(2))      # the seed's stream, as rng_scope gives it


def test_trainable_copy_is_a_trainable_train_mode_copy_and_leaves_the_reference_as_found():
    ref = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5)).requires_grad_(False).eval()
    policy = trainable_copy(ref)
    assert policy is not ref and policy.training and all(p.requires_grad for p in policy.parameters())
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())        # ref untouched
    for p, q in zip(policy.parameters(), ref.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()                         # equal, not shared
    rng = torch.get_rng_state()
    trainable_copy(ref)
    assert torch.equal(torch.get_rng_state(), rng)                                       # draws nothing
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module .* got NoneType"):
        trainable_copy(None)


def test_kept_as_found_puts_back_modes_and_flags_after_an_error():
    from rlnotes.trainer import check_trainable, kept_as_found
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)).eval()
    net[0].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"):
        with kept_as_found(net):
            net.train().requires_grad_(True)
            raise RuntimeError("boom")
    assert not net.training and not net[1].training
    assert net[0].weight.requires_grad and not net[0].bias.requires_grad
    assert check_trainable("net", net) == [net[0].weight]
    with pytest.raises(ValueError, match="net has no trainable parameter"):
        check_trainable("net", net.requires_grad_(False))
    with pytest.raises(TypeError, match="net has torch.float16 parameters"):
        check_trainable("net", net.half().requires_grad_(True))


def test_training_interrupted_takes_any_partial_result():
    from rlnotes.trainer import TrainingInterrupted
    stop = TrainingInterrupted(TrainResult_like := type("R", (), {"history": [1, 2]})(), KeyboardInterrupt())
    assert stop.result is TrainResult_like and "after 2 complete updates (KeyboardInterrupt)" in str(stop)
    other = TrainingInterrupted({"partial": True}, KeyboardInterrupt(), "in phase two")
    assert other.result == {"partial": True} and str(other).startswith("training stopped in phase two")
    assert isinstance(other, KeyboardInterrupt)


def test_history_keeps_evaluations_apart_from_updates():
    h = History()
    h.log({"loss": 1.0, "eval/step": 0, "eval/loss": 2.0})
    h.log(loss=0.5)
    assert h.updates == {"loss": [1.0, 0.5]} and h.evals == {"eval/step": [0.0], "eval/loss": [2.0]}
    assert len(h) == 2 and h.update_array("eval/loss").tolist() == [2.0]
    with pytest.raises(KeyError, match=r"no metric 'kl' was logged; logged: \['eval/loss', 'eval/step', 'loss'\]"):
        h.update_array("kl")


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_history_log_names_metrics():
    with pytest.raises(TypeError, match=r"metrics must be a dict of metric name -> number \(or None\), got int"):
        History().log(5)


def test_rng_scope_names_seed():
    from rlnotes.trainer import rng_scope
    with pytest.raises(TypeError, match=r"seed must be"):
        with rng_scope(None):
            pass
