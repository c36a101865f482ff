"""rlnotes.rlhf: phase 3, PPO on the language model from a ``prepare.Prepared``: its KL penalty and
per-token rewards, the KL controllers, the policy with its value head, the token-level loss, and
what each refuses. (Phases 1 and 2 are tested in test_sft.py, test_reward.py and test_prepare.py;
the measurements in test_measure.py.)"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from rlnotes import lm, measure, rlhf


@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


def test_kl_penalty_per_token_shape():
    logp, logp_ref = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pen = rlhf.kl_penalty(logp, logp_ref, mask, beta=0.5)
    assert pen.shape == (3, 5)
    assert torch.all(pen[mask == 0] == 0)
    assert torch.allclose(pen[mask == 1], (-0.5 * (logp - logp_ref))[mask == 1])
    with pytest.raises(ValueError, match="beta must be in"):
        rlhf.kl_penalty(logp, logp_ref, mask, beta=-1.0)
    with pytest.raises(ValueError, match="shapes must match"):
        rlhf.kl_penalty(logp, logp_ref[:, :4], mask, beta=0.1)
    r_phi = torch.tensor([1.0, 2.0, 3.0])
    rew = rlhf.token_rewards(r_phi, logp, logp_ref, mask, beta=0.5)
    assert rew.shape == (3, 5)
    assert torch.allclose(rew.sum(1), r_phi + pen.sum(1))  # sum_t r_t = r_phi - beta * sum k1
    assert rew[0, 2] == pen[0, 2] + 1.0 and rew[2, 0] == pen[2, 0] + 3.0  # r_phi on the last token
    with pytest.raises(ValueError, match="r_phi must be"):
        rlhf.token_rewards(r_phi[:2], logp, logp_ref, mask, beta=0.5)


def test_kl_controllers():
    assert rlhf.FixedKLController(0.1).update(100.0, 64) == 0.1
    ctl = rlhf.AdaptiveKLController(0.1, target=2.0, horizon=100)
    assert ctl.update(4.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at 0.2
    assert ctl.update(1.9, 10) == pytest.approx(0.1 * 1.02 * (1 - 0.05 * 10 / 100))
    with pytest.raises(ValueError, match="kl_target must be > 0"):
        rlhf.AdaptiveKLController(0.1, target=0.0)
    with pytest.raises(ValueError, match="beta must be in"):
        rlhf.FixedKLController(-0.1)


def test_policy_with_value_and_ppo_token_loss(prepared, sft20_batch):
    policy = rlhf.PolicyWithValue(prepared.sft)
    logits, logp, values = policy(*sft20_batch)
    assert torch.allclose(logp, lm.token_logprobs(prepared.sft, *sft20_batch))
    assert values.shape == logp.shape and torch.all(values == 0)
    adv, mask = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[1, 1, 0]])
    old = torch.zeros(1, 3)
    assert rlhf.ppo_token_loss(old, old, adv, mask, 0.2).item() == pytest.approx(0.5)  # -mean(A) on mask
    new = torch.log(torch.tensor([[2.0, 2.0, 2.0]]))  # rho = 2: clipped to 1.2 for A > 0, kept for A < 0
    assert rlhf.ppo_token_loss(new, old, adv, mask, 0.2).item() == pytest.approx(-(1.2 * 1 - 2 * 2) / 2)


def test_train_ppo_evaluate_and_kl_to_ref(prepared):
    out = rlhf.train(prepared, beta=0.1, steps=2, batch_size=8, epochs=1, seed=0)
    policy, hist = out.model, out.history
    assert isinstance(out.value_fn, rlhf.PolicyWithValue) and out.value_fn.lm is policy
    keys = ("r_phi", "r_star", "kl/exact_per_sequence", "kl/k1_per_sequence", "entropy", "distinct_1", "distinct_2",
            "beta", "completions/clipped_ratio", "loss/value", "seconds")
    assert set(hist.updates) == set(keys)
    for key in keys:
        assert len(hist.update_array(key)) == 2 and math.isfinite(hist.update_array(key)[-1])
    # the first batch comes from pi_ref: exact KL and the summed log-ratio k1 are both 0
    assert hist.update_array("kl/exact_per_sequence")[0] == pytest.approx(0.0, abs=1e-6)
    assert hist.update_array("kl/k1_per_sequence")[0] == pytest.approx(0.0, abs=1e-6)
    clipped = hist.update_array("completions/clipped_ratio")
    assert np.all((clipped >= 0) & (clipped <= 1)) and np.all(clipped * 8 == np.round(clipped * 8))
    ev = measure.evaluate(policy, prepared, n_repeats=1, seed=0)
    means = ("r_star", "r_phi", "kl/exact_per_sequence")
    assert set(ev) == {*means, *(k + "/se" for k in means), "n", "distinct_1", "distinct_2", "samples"}
    assert ev["kl/exact_per_sequence"] > 0 and len(ev["samples"]) == 8 and ev["n"] == 8
    r = prepared.task.true_rewards(prepared.eval_prompts, ev["samples"]).double()
    assert ev["r_star"] == pytest.approx(r.mean().item()) and ev["r_star/se"] == pytest.approx(r.std().item() / 8 ** 0.5)
    assert measure.evaluate(policy, prepared, n_repeats=3, seed=0)["n"] == 24
    assert ev == measure.evaluate(policy, prepared, n_repeats=1, seed=0)
    assert ev == measure.evaluate(out.value_fn, prepared, n_repeats=1, seed=0)  # the LM or the LM with its value head
    assert measure.evaluate(prepared.sft, prepared, n_repeats=1)["kl/exact_per_sequence"] == pytest.approx(0.0, abs=1e-6)
    adaptive = rlhf.train(prepared, beta=0.1, steps=2, batch_size=8, epochs=1, kl_target=1.0).history
    assert adaptive.update_array("beta")[0] == 0.1 and adaptive.update_array("beta")[1] != 0.1
    with pytest.raises(ValueError, match="eps must be > 0"):
        rlhf.train(prepared, eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        rlhf.train(prepared, eps=math.inf)
    with pytest.raises(ValueError, match="minibatch_size must be <="):
        rlhf.train(prepared, batch_size=2, minibatch_size=4)


def test_update_reuses_collects_forward_pass(prepared, monkeypatch):
    """One minibatch per epoch: collect's forward pass serves epoch 0 (one policy forward fewer per
    step) and training follows the same path as recomputing it; with minibatches it is recomputed."""
    calls = []
    forward = rlhf.PolicyWithValue.forward
    monkeypatch.setattr(rlhf.PolicyWithValue, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    kw = dict(beta=0.1, steps=2, batch_size=8, epochs=2, seed=0)
    reused = rlhf.train(prepared, **kw)
    assert len(calls) == 2 * 2  # per step: collect's pass (kept for epoch 0), epoch 1's pass
    calls.clear()
    monkeypatch.setattr(rlhf, "reuses_scoring_pass", lambda *a, **kw: False)
    recomputed = rlhf.train(prepared, **kw)
    assert len(calls) == 2 * 3
    for key in ("r_phi", "kl/exact_per_sequence", "loss/value"):
        np.testing.assert_allclose(reused.history.update_array(key), recomputed.history.update_array(key),
                                   rtol=1e-4, atol=1e-6)
    for a, b in zip(reused.model.parameters(), recomputed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    monkeypatch.undo()
    for minibatch_size, kept in ((4, False), (8, True), (None, True)):   # collect keeps the pass for a whole batch
        cfg = rlhf.RLHFConfig(batch_size=8, minibatch_size=minibatch_size)
        batch = rlhf.collect(reused.value_fn, prepared, prepared.eval_prompts[:8], 0.1, cfg, torch.Generator())
        assert (batch.first_pass is not None) is kept


# ------------------------------------------------------------- bad input


def test_train_ppo_refuses_what_is_not_a_prepared(tiny_prepared):
    with pytest.raises(TypeError, match=r"prepared must be a Prepared \(from prepare.prepare\), got NoneType"):
        rlhf.train(None)
    with pytest.raises(ValueError, match="prepared is a partial Prepared .*sft_history, rm_history are None"):
        rlhf.train(dataclasses.replace(tiny_prepared, sft_history=None, rm_history=None))


@pytest.mark.parametrize("scores, error, match", [
    (lambda n: torch.full((n,), float("nan")), ValueError,
     r"must return finite numbers; got NaN or inf for responses \[0, 1\]"),
    (lambda n: torch.zeros(2 * n), ValueError, r"must return one number per response \(2\).*got 4 values"),
    (lambda n: None, TypeError, r"must return one number per response \(2\).*got NoneType")])
def test_train_ppo_checks_the_reward_models_scores(tiny_prepared, scores, error, match):
    bad = dataclasses.replace(tiny_prepared, reward_model=lambda p, pm, ids, mask: scores(len(p)))
    with pytest.raises(error, match="prepared.reward_model " + match):
        rlhf.train(bad, steps=1, batch_size=2, epochs=1)


def test_token_rewards_and_ppo_token_loss_bad_input():
    logp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"r_phi must be finite \(it holds NaN or inf\)"):
        rlhf.token_rewards(torch.tensor([1.0, float("nan")]), logp, logp, mask, beta=0.1)
    with pytest.raises(TypeError, match="r_phi must be a tensor"):
        rlhf.token_rewards([1.0, 2.0], logp, logp, mask, beta=0.1)
    with pytest.raises(ValueError, match="mask must mark at least one response token, got none"):
        rlhf.ppo_token_loss(logp, logp, logp, torch.zeros(2, 3), 0.2)


def test_train_ppo_interrupted_before_the_policy_exists(tiny_prepared, monkeypatch, interrupt_on_call):
    from rlnotes.trainer import TrainingInterrupted

    monkeypatch.setattr(rlhf, "PolicyWithValue", interrupt_on_call(1)(rlhf.PolicyWithValue))
    with pytest.raises(KeyboardInterrupt) as caught:
        rlhf.train(tiny_prepared, steps=2, batch_size=2, epochs=1)
    assert isinstance(caught.value, TrainingInterrupted)
    assert caught.value.result.model is None and caught.value.result.value_fn is None
    assert len(caught.value.result.history) == 0 and caught.value.result.config.steps == 2


def test_train_ppo_refuses_a_zero_max_grad_norm_and_a_negative_vf_coef_by_name(tiny_prepared):
    with pytest.raises(ValueError, match="max_grad_norm must be > 0, got 0.0"):
        rlhf.train(tiny_prepared, max_grad_norm=0)
    with pytest.raises(ValueError, match=r"vf_coef must be in \[0.0, inf\], got -1.0"):
        rlhf.train(tiny_prepared, vf_coef=-1)


def test_train_ppo_eps_is_any_positive_finite_number(tiny_prepared):
    with pytest.raises(ValueError, match="eps must be > 0"):
        rlhf.train(tiny_prepared, eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        rlhf.train(tiny_prepared, eps=math.inf)
    out = rlhf.train(tiny_prepared, eps=1.5, steps=1, batch_size=2, epochs=1)  # (0, inf): 1.5 is fine
    assert out.config.eps == 1.5 and len(out.history) == 1


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


def test_token_rewards_accept_a_float_mask():
    torch.manual_seed(0)
    logp, logp_ref, r_phi = torch.randn(2, 4), torch.randn(2, 4), torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    as_int = rlhf.token_rewards(r_phi, logp, logp_ref, mask, beta=0.1)
    as_float = rlhf.token_rewards(r_phi, logp, logp_ref, mask.float(), beta=0.1)
    torch.testing.assert_close(as_float, as_int)
    assert as_float[0, 2] == pytest.approx(-0.1 * (logp[0, 2] - logp_ref[0, 2]).item() + 1.0)  # r_phi at the last token


LPt, LRt, MK = torch.tensor([[-1., -2., 0.]]), torch.tensor([[-1.5, -1., 0.]]), torch.tensor([[1, 1, 0]])


def test_kl_penalty_refuses_logprobs_that_are_not_finite():  # fix27 item 16
    with pytest.raises(ValueError, match=r"logp must be finite"):
        rlhf.kl_penalty(LPt * float("nan"), LRt, MK, 0.5)
    with pytest.raises(ValueError, match=r"logp_ref must be finite"):
        rlhf.kl_penalty(LPt, LRt - math.inf, MK, 0.5)


def test_kl_penalty_refuses_a_mask_not_of_0s_and_1s():  # fix27 item 17
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .*got a value of 2"):
        rlhf.kl_penalty(LPt, LRt, MK * 2, 0.5)
    expected = rlhf.kl_penalty(LPt, LRt, MK, 0.5)  # bool and float masks still pass, with the same values
    assert torch.equal(rlhf.kl_penalty(LPt, LRt, MK.bool(), 0.5), expected)
    assert torch.equal(rlhf.kl_penalty(LPt, LRt, MK.float(), 0.5), expected)


def test_ppo_token_loss_refuses_a_mask_not_of_0s_and_1s_and_names_old_logp():  # fix27 item 18
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .*got a value of 2"):
        rlhf.ppo_token_loss(LPt, LPt, torch.tensor([[1., 3., 0.]]), torch.tensor([[2, 1, 0]]), 0.2)
    with pytest.raises(ValueError, match=r"^old_logp must be finite"):
        rlhf.ppo_token_loss(LPt, LPt * float("nan"), torch.tensor([[1., 3., 0.]]), MK, 0.2)
    assert rlhf.ppo_token_loss(LPt, LPt, torch.tensor([[1., 3., 0.]]), MK.bool(), 0.2).item() == -2.0


def test_max_grad_norm_none_turns_clipping_off(tiny_prepared):
    assert rlhf.RLHFConfig(max_grad_norm=None).max_grad_norm is None
    out = rlhf.train(tiny_prepared, steps=1, batch_size=2, max_grad_norm=None, seed=0)
    assert out.config.max_grad_norm is None and len(out.history) == 1


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

LP, LR, MASK = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]]), torch.tensor([[1, 1, 0]])


def test_kl_penalty_refuses_lists_naming_logp():
    with pytest.raises(TypeError, match=r"logp must be a torch.Tensor, got list"):
        rlhf.kl_penalty(LP.tolist(), LR.tolist(), MASK.tolist(), 0.5)


def test_kl_penalty_refuses_nan_and_a_mask_of_2s():
    with pytest.raises(ValueError, match=r"logp must be finite"):
        rlhf.kl_penalty(LP * math.nan, LR, MASK, 0.5)
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .* got a value of 2"):
        rlhf.kl_penalty(LP, LR, MASK * 2, 0.5)


def test_ppo_token_loss_refuses_a_mask_of_2s_nan_old_logp_and_lists():
    adv = torch.tensor([[1.0, -1.0, 0.0]])
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .* got a value of 2"):
        rlhf.ppo_token_loss(LP, LP, torch.tensor([[1.0, 3.0, 0.0]]), torch.tensor([[2, 1, 0]]), 0.2)
    with pytest.raises(ValueError, match=r"old_logp must be finite"):
        rlhf.ppo_token_loss(LP, LP * math.nan, adv, MASK, 0.2)
    with pytest.raises(TypeError, match=r"advantages must be a torch.Tensor, got list"):
        rlhf.ppo_token_loss(LP, LP, adv.tolist(), MASK, 0.2)


def test_train_refuses_a_huge_batch_before_any_work(tiny_prepared):
    with pytest.raises(ValueError, match=rf"batch_size must be <= MAX_BATCH_SIZE \({rlhf.MAX_BATCH_SIZE}\) .*1000000"):
        rlhf.train(tiny_prepared, steps=1, batch_size=10**6)


def test_train_inside_no_grad_or_with_float64_default_gives_the_same_run(tiny_prepared):
    plain = rlhf.train(tiny_prepared, steps=1, batch_size=4, epochs=1).history.updates
    with torch.no_grad():
        no_grad = rlhf.train(tiny_prepared, steps=1, batch_size=4, epochs=1).history.updates
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        f64 = rlhf.train(tiny_prepared, steps=1, batch_size=4, epochs=1).history.updates
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)
    for key in ("r_phi", "loss/value", "kl/exact_per_sequence"):
        assert no_grad[key] == plain[key] == f64[key]


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_train_refuses_an_fp16_sft_naming_prepared_sft(tiny_prepared):
    import copy
    half = dataclasses.replace(tiny_prepared, sft=copy.deepcopy(tiny_prepared.sft).half())
    with pytest.raises(TypeError, match=r"prepared\.sft has torch\.float16 parameters"):
        rlhf.train(half, steps=1, batch_size=2)


@pytest.mark.parametrize("name, value, cap", [("steps", 10**9, r"MAX_STEPS \(100000\)"),
                                              ("epochs", 10**9, r"MAX_EPOCHS \(1000\)")])
def test_train_refuses_steps_and_epochs_above_their_caps(tiny_prepared, name, value, cap):
    with pytest.raises(ValueError, match=rf"{name} must be <= {cap}, got {value}"):
        rlhf.train(tiny_prepared, **{"steps": 1, "batch_size": 2, name: value})
