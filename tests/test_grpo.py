"""rlnotes.grpo: group advantages (zero std included), the loss's three aggregations, the trainer,
and the expected gradients of the ways to put a KL into training (``kl_term_gradients``)."""

import numpy as np
import pytest
import torch

from rlnotes import grpo, measure
from rlnotes.kl import k3


def test_group_advantages_by_hand_and_zero_std():
    r = torch.tensor([[1.0, 3.0], [0.1, 0.1], [0.0, 0.0]])
    std = 2 ** 0.5                                   # unbiased std of (1, 3)
    adv = grpo.group_advantages(r)
    torch.testing.assert_close(adv[0], torch.tensor([-1.0, 1.0]) / (std + 1e-4))
    assert torch.equal(adv[1:], torch.zeros(2, 2))   # equal rewards: exactly 0, not nan or inf
    torch.testing.assert_close(grpo.group_advantages(r, scale=False)[0], torch.tensor([-1.0, 1.0]))
    # a tiny difference is blown up to unit scale by the std (Dr. GRPO's second bias)
    tiny = grpo.group_advantages(torch.tensor([[0.0, 0.0, 0.0, 1e-3]]))
    assert tiny.abs().max() > 1.0


def test_group_advantages_bad_arguments():
    with pytest.raises(ValueError, match="rewards"):
        grpo.group_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="eps"):
        grpo.group_advantages(torch.zeros(3, 2), eps=0.0)


def _batch():
    g = torch.Generator().manual_seed(0)
    logp_old = -torch.rand(3, 4, generator=g) - 0.1
    logp = (logp_old + 0.3 * torch.randn(3, 4, generator=g)).requires_grad_(True)
    logp_ref = logp_old - 0.2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0])
    return logp, logp_old, logp_ref, adv, mask


def test_grpo_loss_by_hand_each_aggregation():
    logp, logp_old, logp_ref, adv, mask = _batch()
    beta, eps = 0.1, 0.2
    rho = torch.exp(logp - logp_old)
    A = adv[:, None].expand(3, 4)
    per_token = -torch.min(rho * A, rho.clamp(0.8, 1.2) * A) + beta * k3(logp, logp_ref)
    m = mask.float()
    expected = {"grpo": sum((per_token[i] * m[i]).sum() / m[i].sum() for i in range(3)) / 3,
                "dr_grpo": (per_token * m).sum() / (3 * 8), "dapo": (per_token * m).sum() / 7}
    for loss_type, value in expected.items():
        out = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, beta, eps, loss_type, max_length=8)
        torch.testing.assert_close(out.loss, value)
    out = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, beta, eps)
    torch.testing.assert_close(out.kl, (k3(logp, logp_ref) * m).sum() / 7)
    assert out.clip_ratio.item() == pytest.approx((((rho - 1).abs() > eps).float() * m).sum().item() / 7)


def test_grpo_loss_gradient_at_old_policy_is_reinforce_plus_k3():
    logp, logp_old, logp_ref, adv, mask = _batch()
    logp = logp_old.clone().requires_grad_(True)
    grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, beta=0.0, loss_type="dapo").loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(3, 4) * mask / 7)
    # k3's gradient: d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp)
    logp2 = logp_old.clone().requires_grad_(True)
    grpo.grpo_loss(logp2, logp_old, logp_ref, torch.zeros(3), mask, beta=1.0, loss_type="dapo").loss.backward()
    torch.testing.assert_close(logp2.grad, (1 - torch.exp(logp_ref - logp_old)) * mask / 7)


def test_grpo_loss_bad_arguments_and_extreme_logits():
    logp, logp_old, logp_ref, adv, mask = _batch()
    with pytest.raises(ValueError, match="loss_type"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="advantages"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv[:2], mask)
    with pytest.raises(ValueError, match="beta"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, beta=-1)
    with pytest.raises(ValueError, match="eps"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, eps=0)
    with pytest.raises(ValueError, match="shapes"):
        grpo.grpo_loss(logp, logp_old[:, :2], logp_ref, adv, mask)
    out = grpo.grpo_loss(logp_old - 30, logp_old, logp_ref, adv, mask)
    assert torch.isfinite(out.loss)


@pytest.fixture(scope="module")
def prepared(prepared_sft40):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft40``)."""
    return prepared_sft40


def test_train_improves_r_star(prepared):
    P = prepared
    before = measure.evaluate(P.sft, P)["r_star"]
    out = grpo.train(P, steps=25, batch_size=8, num_generations=4, lr=3e-3, beta=0.04, epochs=2, minibatch_size=16,
                     seed=0)
    after = measure.evaluate(out.model, P)["r_star"]
    assert after > before + 0.3, (before, after)
    h = out.history
    for key in ("loss", "reward", "reward_std", "frac_reward_zero_std", "kl/k3_per_token", "kl/exact_per_sequence",
                "entropy", "clip_ratio/region_mean", "completions/mean_length", "completions/clipped_ratio",
                "r_star", "seconds"):
        assert len(h.update_array(key)) == 25
    assert h.update_array("clip_ratio/region_mean").max() > 0   # a second epoch moves ratios out of the range
    again = grpo.train(P, steps=2, batch_size=8, num_generations=4, lr=3e-3, beta=0.04, epochs=2, minibatch_size=16,
                       seed=0)
    assert again.history.updates["loss"] == h.updates["loss"][:2]


@pytest.mark.parametrize("kwargs, name", [({"num_generations": 1}, "num_generations"),
                                          ({"loss_type": "x"}, "loss_type"),
                                          ({"scale_rewards": "yes"}, "scale_rewards"), ({"eps": 0}, "eps"),
                                          ({"minibatch_size": 0}, "minibatch_size")])
def test_train_bad_arguments(prepared, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        grpo.train(prepared, **kwargs)


def test_interrupt_gives_the_partial_result(prepared):
    from rlnotes.trainer import TrainingInterrupted

    calls = []

    def reward(prompts, responses):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return prepared.task.true_rewards(prompts, responses)

    with pytest.raises(TrainingInterrupted) as stop:
        grpo.train(prepared, reward_fn=reward, steps=5, batch_size=2, num_generations=2, seed=0)
    assert len(stop.value.result.history) == 2 and stop.value.result.config.steps == 5


# ------------------------------------------------------------- bad input

def _run(prepared, reward_fn=None, **kw):
    return grpo.train(prepared, reward_fn=reward_fn, **{"steps": 1, "batch_size": 2, "num_generations": 2, "seed": 0, **kw})


def test_reward_fn_returning_twice_the_responses_is_refused(tiny_prepared):
    P = tiny_prepared
    with pytest.raises(ValueError, match=r"reward_fn must return one number per response \(4\).*got 8 values"):
        grpo.train(P, reward_fn=lambda xs, ys: torch.arange(2.0 * len(ys)), steps=1, batch_size=2, num_generations=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_reward_fn_nan_or_inf_is_refused(tiny_prepared, bad):
    with pytest.raises(ValueError, match=r"reward_fn must return finite numbers; got NaN or inf for responses \[0\]"):
        _run(tiny_prepared, lambda xs, ys: [bad] + [0.0] * (len(ys) - 1))


@pytest.mark.parametrize("returned, error", [(None, TypeError), ("good", TypeError), ({"r": 1.0}, TypeError),
                                             (np.zeros((4, 1)), ValueError), ([[0.0, 1.0]] * 2, ValueError)])
def test_reward_fn_returning_what_is_not_one_number_per_response(tiny_prepared, returned, error):
    with pytest.raises(error, match=r"reward_fn must return one number per response \(4\)"):
        _run(tiny_prepared, lambda xs, ys: returned)


def test_reward_fn_list_or_numpy_trains_as_the_tensor(tiny_prepared):
    def reward(xs, ys):
        return tiny_prepared.task.true_rewards(xs, ys)

    base = _run(tiny_prepared, reward, steps=2)
    for convert in (lambda r: r.tolist(), lambda r: r.numpy().astype(np.float64)):
        run = _run(tiny_prepared, lambda xs, ys: convert(reward(xs, ys)), steps=2)
        assert run.history.updates["loss"] == base.history.updates["loss"]


def test_train_refuses_what_is_not_a_prepared_or_a_reward_function(tiny_prepared):
    with pytest.raises(TypeError, match=r"prepared must be a Prepared \(from prepare.prepare\), got NoneType"):
        grpo.train(None)
    with pytest.raises(TypeError, match="reward_fn must be a function .* got str 'r_star'"):
        grpo.train(tiny_prepared, reward_fn="r_star")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_group_advantages_refuse_nan_and_inf(bad):
    with pytest.raises(ValueError, match=r"rewards must be finite \(it holds NaN or inf\)"):
        grpo.group_advantages(torch.tensor([[1.0, bad], [0.0, 1.0]]))


def test_group_advantages_types():
    r = torch.tensor([[1.0, 3.0, 2.0]])
    assert torch.equal(grpo.group_advantages([[1.0, 3.0, 2.0]]), grpo.group_advantages(r))   # a list, as a tensor
    assert torch.equal(grpo.group_advantages(torch.tensor([[1, 3, 2]])), grpo.group_advantages(r))  # integers
    with pytest.raises(TypeError, match="rewards must hold real numbers, got torch.bool"):
        grpo.group_advantages(torch.tensor([[True, False]]))
    with pytest.raises(TypeError, match="scale must be True or False, got 'no'"):
        grpo.group_advantages(r, scale="no")


def test_grpo_loss_refuses_nan_advantages_no_response_and_a_short_max_length():
    logp, logp_old, logp_ref, adv, mask = _batch()
    with pytest.raises(ValueError, match=r"advantages must be finite"):
        grpo.grpo_loss(logp, logp_old, logp_ref, torch.tensor([1.0, float("nan"), 0.0]), mask)
    with pytest.raises(TypeError, match="advantages must be a tensor, got list"):
        grpo.grpo_loss(logp, logp_old, logp_ref, [1.0, -0.5, 2.0], mask)
    empty = torch.zeros(0, 4)
    with pytest.raises(ValueError, match=r"N >= 1 .* got shapes \(0, 4\) and \(0,\)"):
        grpo.grpo_loss(empty, empty, empty, torch.zeros(0), empty)
    with pytest.raises(ValueError, match="max_length must be >= 4, got 2"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, loss_type="dr_grpo", max_length=2)
    grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, loss_type="dr_grpo", max_length=4)   # T itself is fine


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl_term_gradients_by_hand(logits, ref_logits):
    """The five expected gradients w.r.t. the logits theta, in closed form (NumPy, no autograd). With
    p = softmax(theta), q = softmax(ref_logits), a = log p - log q and d log p_i / d theta = e_i - p:
    grad KL(p || q) = p (a - KL(p || q)) and grad KL(q || p) = p - q; a k1 loss term has
    E[grad log p(y)] = sum_i p_i (e_i - p) = 0; k1 as a reward gives sum_i p_i a_i (e_i - p) = grad KL(p || q);
    k3(i) = q_i/p_i - 1 - log(q_i/p_i) has grad k3(i) = (1 - q_i/p_i)(e_i - p), whose mean under p is p - q."""
    p, q = _softmax(np.asarray(logits, float)), _softmax(np.asarray(ref_logits, float))
    a = np.log(p) - np.log(q)
    reverse, forward = p * (a - (p * a).sum()), p - q
    return {"k1_loss": np.zeros_like(p), "k1_reward": reverse, "k3_loss": forward, "reverse": reverse,
            "forward": forward}


def _book_state():
    g = torch.Generator().manual_seed(0)            # chapter 6's cell: one state, 12 tokens
    return torch.randn(12, generator=g), torch.randn(12, generator=g)


@pytest.mark.parametrize("case", ["three tokens", "peaked", "book"])
def test_kl_term_gradients_are_the_closed_forms(case):
    """Chapter 6 (6.4) rests on these: a k1 loss term has no expected gradient, k1 in the reward follows
    KL(pi || pi_ref) and GRPO's k3 loss term follows KL(pi_ref || pi), a different gradient."""
    logits, ref_logits = {"three tokens": ([2.0, 0.0, -1.0], [0.0, 0.5, 0.5]),
                          "peaked": ([6.0, -3.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]),
                          "book": _book_state()}[case]
    got = grpo.kl_term_gradients(logits, ref_logits)
    want = _kl_term_gradients_by_hand(logits, ref_logits)
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == torch.float64 and value.shape == (len(logits),), name
        np.testing.assert_allclose(value.numpy(), want[name], rtol=1e-9, atol=1e-12, err_msg=name)
    # the closed forms themselves, against central differences of the two KLs
    p_ref = _softmax(np.asarray(ref_logits, float))

    def kls(theta):
        p = _softmax(theta)
        return np.array([(p * np.log(p / p_ref)).sum(), (p_ref * np.log(p_ref / p)).sum()])

    theta, h = np.asarray(logits, float), 1e-6
    numeric = np.array([(kls(theta + h * e) - kls(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
    np.testing.assert_allclose(numeric[:, 0], want["reverse"], atol=1e-8)
    np.testing.assert_allclose(numeric[:, 1], want["forward"], atol=1e-8)
    assert np.abs(want["forward"] - want["reverse"]).max() > 1e-2          # two different gradients
    # at pi = pi_ref every one of them is 0
    same = grpo.kl_term_gradients(logits, logits)
    assert all(torch.allclose(v, torch.zeros_like(v), atol=1e-12) for v in same.values())


def test_kl_term_gradients_one_state_finite():
    with pytest.raises(ValueError, match=r"logits must be one state's logits, 1-D \[K\], got shape \(2, 3\)"):
        grpo.kl_term_gradients(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ref_logits must be finite"):
        grpo.kl_term_gradients(torch.zeros(3), torch.tensor([0.0, float("-inf"), 1.0]))
    as_list = grpo.kl_term_gradients([0.5, -1.0, 2.0], [0.0, 0.0, 0.0])
    as_tensor = grpo.kl_term_gradients(torch.tensor([0.5, -1.0, 2.0]), torch.zeros(3))
    assert all(torch.equal(as_list[k], as_tensor[k]) for k in as_tensor)


def test_grpo_loss_refuses_a_mask_that_is_not_zero_one():
    logp, logp_old, logp_ref, adv, mask = _batch()
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .*got a value of 2"):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask.long() * 2, loss_type="dr_grpo")
    want = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask.float(), loss_type="dr_grpo").loss
    for m in (mask.bool(), mask.long(), mask.double()):   # every 0/1 mask gives the same loss
        assert torch.equal(grpo.grpo_loss(logp, logp_old, logp_ref, adv, m, loss_type="dr_grpo").loss, want)


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

def test_grpo_loss_refuses_a_mask_of_2s():
    lp = torch.tensor([[-1.0, -2.0, 0.0]])
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .* got a value of 2"):
        grpo.grpo_loss(lp, lp, lp, torch.tensor([1.0]), torch.tensor([[2, 2, 0]]), loss_type="dr_grpo")


@pytest.mark.parametrize("logits", [["a", "b"], None, [True, False]])
def test_kl_term_gradients_refuses_logits_that_are_not_numbers(logits):
    with pytest.raises(TypeError, match=r"logits must be a 1-D tensor, array or list of K real numbers"):
        grpo.kl_term_gradients(logits, [0.0, 1.0])
    with pytest.raises(TypeError, match=r"ref_logits must be a 1-D tensor"):
        grpo.kl_term_gradients([0.0, 1.0], logits)


@pytest.mark.parametrize("name", ["logp", "logp_old", "logp_ref"])
def test_grpo_loss_names_the_log_probability_that_is_nan(name):
    lp = torch.tensor([[-1.0, -2.0, 0.0]])
    args = {"logp": lp, "logp_old": lp, "logp_ref": lp, name: lp * float("nan")}
    with pytest.raises(ValueError, match=rf"^{name} must be finite"):
        grpo.grpo_loss(**args, advantages=torch.tensor([1.0]), mask=torch.tensor([[1, 1, 0]]))


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_train_refuses_an_fp16_sft_naming_prepared_sft(tiny_prepared):
    import copy, dataclasses
    half = dataclasses.replace(tiny_prepared, sft=copy.deepcopy(tiny_prepared.sft).half())
    with pytest.raises(TypeError, match=r"prepared\.sft has torch\.float16 parameters"):
        grpo.train(half, steps=1, batch_size=2, num_generations=2)


@pytest.mark.parametrize("name, value, cap", [("steps", 10**9, r"MAX_STEPS \(100000\)"),
                                              ("epochs", 10**9, r"MAX_EPOCHS \(1000\)")])
def test_train_refuses_steps_and_epochs_above_their_caps(tiny_prepared, name, value, cap):
    with pytest.raises(ValueError, match=rf"{name} must be <= {cap}, got {value}"):
        grpo.train(tiny_prepared, **{"steps": 1, "batch_size": 2, "num_generations": 2, name: value})


# ------------------------------------------------------------- the GRPO family of 2025 (DAPO, GSPO, k1/k2/k3)

def test_gspo_ratio_is_exp_of_the_mean_log_ratio_and_clipped_per_response():
    logp, logp_old, logp_ref, adv, mask = _batch()
    m = mask.float()
    s = torch.exp(((logp - logp_old) * m).sum(1) / m.sum(1))          # eq. gspo-ratio, one per response
    eps = 0.05
    per_seq = -torch.min(s * adv, s.clamp(1 - eps, 1 + eps) * adv)
    out = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, beta=0.0, eps=eps, importance_sampling_level="sequence")
    torch.testing.assert_close(out.loss, per_seq.mean())             # "grpo": the mean over tokens of a constant
    clipped = ((s - 1).abs() > eps).float()
    assert out.clip_ratio.item() == pytest.approx(((clipped[:, None] * m).sum() / m.sum()).item())
    # the gradient flows through the sequence ratio: d s_i / d logp_{i,t} = s_i m_{i,t} / |y_i| inside the range
    lp = logp_old.clone().requires_grad_(True)
    grpo.grpo_loss(lp, logp_old, logp_ref, adv, mask, beta=0.0, importance_sampling_level="sequence").loss.backward()
    torch.testing.assert_close(lp.grad, -(adv[:, None] * m / m.sum(1, keepdim=True)) / 3)


def test_eps_high_changes_only_the_positive_advantage_side():
    logp_old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.25], [1.25]])).requires_grad_(True)   # rho = 1.25 for both
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 1)

    def per_response(**kw):
        return [grpo.grpo_loss(logp[i:i + 1], logp_old[i:i + 1], logp_old[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                               beta=0.0, **kw).loss.item() for i in range(2)]

    sym, high = per_response(eps=0.2), per_response(eps=0.2, eps_high=0.28)
    assert sym[0] == pytest.approx(-1.2) and high[0] == pytest.approx(-1.25)   # A > 0: clipped at 1.28, not 1.2
    assert sym[1] == high[1] == pytest.approx(1.25)                            # A < 0: min picks rho either way
    low = torch.log(torch.tensor([[0.7]]))
    for a in (1.0, -1.0):   # below 1 - eps both clip alike
        one = [grpo.grpo_loss(low, torch.zeros(1, 1), low, torch.tensor([a]), torch.ones(1, 1), beta=0.0, eps=0.2,
                              eps_high=e).loss.item() for e in (None, 0.28)]
        assert one[0] == one[1]
    out = grpo.grpo_loss(logp, logp_old, logp_old, adv, mask, beta=0.0, eps=0.2, eps_high=0.28)
    assert out.clip_ratio.item() == 0.0                                       # 1.25 < 1.28: inside the range


def test_eps_high_none_or_equal_is_plain_grpo_bit_for_bit():
    logp, logp_old, logp_ref, adv, mask = _batch()
    plain = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask)
    for kw in ({"eps_high": None}, {"eps_high": 0.2}, {"importance_sampling_level": "token", "kl_estimator": "k3"}):
        same = grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, **kw)
        assert all(torch.equal(a, b) for a, b in zip(plain, same))


def test_masked_responses_contribute_zero():
    logp, logp_old, logp_ref, adv, mask = _batch()
    masked = mask.clone()
    masked[1] = 0                                   # response 1 truncated: mask_truncated_completions
    m = masked.float()
    rho = torch.exp(logp - logp_old)
    per_token = -torch.min(rho * adv[:, None], rho.clamp(0.8, 1.2) * adv[:, None]) + 0.04 * k3(logp, logp_ref)
    out = grpo.grpo_loss(logp, logp_old, logp_ref, adv, masked, loss_type="dapo")
    torch.testing.assert_close(out.loss, (per_token * m).sum() / m.sum())
    out.loss.backward()
    assert torch.equal(logp.grad[1], torch.zeros(4))
    # "grpo": the masked response still counts in the mean over responses (as TRL), with 0
    out = grpo.grpo_loss(logp, logp_old, logp_ref, adv, masked)
    torch.testing.assert_close(out.loss, ((per_token * m).sum(1)[[0, 2]] / m.sum(1)[[0, 2]]).sum() / 3)


def test_kl_estimators_as_loss_terms():
    logp, logp_old, logp_ref, adv, mask = _batch()
    m = mask.float()
    log_rho = logp_ref - logp
    values = {"k1": -log_rho, "k2": 0.5 * log_rho ** 2, "k3": torch.exp(log_rho) - 1 - log_rho}
    zero = torch.zeros(3)
    for name, kl in values.items():
        out = grpo.grpo_loss(logp, logp_old, logp_ref, zero, mask, beta=1.0, loss_type="dapo", kl_estimator=name)
        torch.testing.assert_close(out.loss, (kl * m).sum() / 7)
        torch.testing.assert_close(out.kl, (values["k3"] * m).sum() / 7)    # the logged KL stays k3 per token
    # gradients w.r.t. logp: k1 -> 1, k2 -> logp - logp_ref, k3 -> 1 - exp(logp_ref - logp)
    for name, grad in (("k1", torch.ones(3, 4)), ("k2", (logp - logp_ref).detach()),
                       ("k3", 1 - torch.exp(logp_ref - logp).detach())):
        lp = logp.detach().clone().requires_grad_(True)
        out = grpo.grpo_loss(lp, logp_old, logp_ref, zero, mask, beta=1.0, loss_type="dapo", kl_estimator=name)
        out.loss.backward()
        torch.testing.assert_close(lp.grad, grad * m / 7)


def test_kept_rows_drops_the_groups_with_equal_rewards():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.2])
    assert grpo.kept_rows(r, 2).tolist() == [2, 3, 6, 7]
    assert grpo.kept_rows(torch.ones(4), 2).tolist() == []
    with pytest.raises(ValueError, match="k=3"):
        grpo.kept_rows(r, 3)
    with pytest.raises(TypeError, match="rewards"):
        grpo.kept_rows([1.0, 0.0], 2)


def test_soft_overlong_punishment_is_dapo_eq_13():
    out = grpo.soft_overlong_punishment([0, 6, 7, 8, 9, 10, 11], max_length=10, cache=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]))
    assert grpo.soft_overlong_punishment(torch.tensor([90]), 100, 20).tolist() == [-0.5]   # TRL's docstring example
    assert grpo.soft_overlong_punishment([5, 8, 9], 8, 0).tolist() == [0.0, 0.0, -1.0]
    for kwargs, name in (({"lengths": [1.5]}, "lengths"), ({"lengths": [-1]}, "lengths"),
                         ({"max_length": 0}, "max_length"), ({"cache": 11}, "cache"), ({"cache": -1}, "cache")):
        with pytest.raises((TypeError, ValueError), match=name):
            grpo.soft_overlong_punishment(**{"lengths": [3], "max_length": 10, "cache": 4, **kwargs})


@pytest.mark.parametrize("kwargs, name", [({"eps_high": 0.1}, "eps_high"), ({"eps_high": "x"}, "eps_high"),
                                          ({"importance_sampling_level": "seq"}, "importance_sampling_level"),
                                          ({"kl_estimator": "k4"}, "kl_estimator")])
def test_grpo_loss_refuses_bad_switches(kwargs, name):
    logp, logp_old, logp_ref, adv, mask = _batch()
    with pytest.raises((ValueError, TypeError), match=name):
        grpo.grpo_loss(logp, logp_old, logp_ref, adv, mask, **kwargs)


@pytest.mark.parametrize("kwargs, name", [({"eps_high": 0.1}, "eps_high"),
                                          ({"importance_sampling_level": "x"}, "importance_sampling_level"),
                                          ({"mask_truncated_completions": 1}, "mask_truncated_completions"),
                                          ({"dynamic_sampling": "yes"}, "dynamic_sampling"),
                                          ({"kl_estimator": "k0"}, "kl_estimator")])
def test_config_refuses_bad_switches(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        grpo.GRPOConfig(**kwargs)


def test_defaults_are_plain_grpo():
    c = grpo.GRPOConfig()
    assert (c.eps_high, c.importance_sampling_level, c.mask_truncated_completions, c.dynamic_sampling,
            c.kl_estimator) == (None, "token", False, False, "k3")


def test_train_switches_run_and_dynamic_sampling_logs_the_fraction_kept(tiny_prepared):
    base = _run(tiny_prepared, steps=2).history.updates
    same = _run(tiny_prepared, steps=2, eps_high=None, kl_estimator="k3").history.updates
    assert {k: v for k, v in base.items() if k != "seconds"} == {k: v for k, v in same.items() if k != "seconds"}
    h = _run(tiny_prepared, steps=2, dynamic_sampling=True, eps_high=0.28, mask_truncated_completions=True,
             importance_sampling_level="sequence", kl_estimator="k2").history
    kept = h.update_array("frac_groups_kept")
    np.testing.assert_allclose(kept, 1 - h.update_array("frac_reward_zero_std"))
    assert base["frac_groups_kept"] == [1.0, 1.0]     # without the switch every group is kept


def test_soft_overlong_punishment_inside_a_reward_fn(tiny_prepared):
    task = tiny_prepared.task

    def reward(prompts, responses):   # the word-level tokenizer: one token per word
        lengths = [len(y.split()) for y in responses]
        return task.true_rewards(prompts, responses) + grpo.soft_overlong_punishment(lengths, 8, 4)

    h = _run(tiny_prepared, reward, steps=2).history
    assert (h.update_array("reward") <= h.update_array("r_star") + 1e-6).all()
