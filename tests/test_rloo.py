"""rlnotes.rloo: leave-one-out baselines, the exact bias of the group mean, and the RLOO trainer (the groups of
samples it shares with GRPO: test_groups.py)."""

import numpy as np
import pytest
import torch

from rlnotes import measure, rloo
from rlnotes.trainer import TrainResult, trainable_copy


def test_rloo_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    # sample 1 of row 0: 1 - (2 + 3 + 6) / 3 = -8/3; sample 4: 6 - (1 + 2 + 3) / 3 = 4
    expected = torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rloo.rloo_advantages(r), expected)
    # the identity A_i = k/(k-1) (r_i - mean)
    torch.testing.assert_close(rloo.rloo_advantages(r), 4 / 3 * (r - r.mean(1, keepdim=True)))


@pytest.mark.parametrize("shape", [(4,), (3, 1), (2, 2, 2)])
def test_rloo_advantages_bad_shape(shape):
    with pytest.raises(ValueError, match="rewards"):
        rloo.rloo_advantages(torch.zeros(shape))


def test_rloo_loss_value_and_gradient_are_reinforce():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss = rloo.rloo_loss(logp, logp.detach(), adv)
    assert loss.item() == pytest.approx(-adv.mean().item())
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 3)
    with pytest.raises(ValueError, match="advantages"):
        rloo.rloo_loss(logp, logp.detach(), adv[:2])


def test_exact_moments_leave_one_out_unbiased_group_mean_scaled():
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = torch.tensor([6.0, 5.0, 3.0])          # far from 0: where a baseline pays
    for k in (2, 3, 4):
        m = rloo.exact_estimator_moments(probs, r, k)
        torch.testing.assert_close(m["none"]["mean"], m["true"], atol=1e-12, rtol=0)
        torch.testing.assert_close(m["leave_one_out"]["mean"], m["true"], atol=1e-12, rtol=0)
        torch.testing.assert_close(m["group_mean"]["mean"], (k - 1) / k * m["true"], atol=1e-12, rtol=0)
        assert m["leave_one_out"]["variance"] < m["none"]["variance"]
        assert not torch.allclose(m["group_std"]["mean"], m["true"])
    with pytest.raises(ValueError, match="k"):
        rloo.exact_estimator_moments(probs, r, 1)


@pytest.fixture(scope="module")
def prepared(prepared_sft40):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft40``)."""
    return prepared_sft40


def test_train_improves_r_star_and_follows_the_contract(prepared):
    P = prepared
    before = measure.evaluate(P.sft, P)["r_star"]
    ref_state = [p.clone() for p in P.sft.parameters()]
    rng = torch.get_rng_state()
    out = rloo.train(P, steps=25, batch_size=8, num_generations=4, lr=3e-3, beta=0.05, seed=0)
    assert isinstance(out, TrainResult) and out.config.num_generations == 4 and out.value_fn is None
    assert torch.equal(torch.get_rng_state(), rng)
    after = measure.evaluate(out.model, P)["r_star"]
    h = out.history
    assert after > before + 0.3, (before, after)
    for key in ("loss", "reward", "reward_std", "kl/exact_per_sequence", "kl/k1_per_sequence", "entropy",
                "completions/mean_length", "completions/clipped_ratio", "r_star", "seconds"):
        assert len(h.update_array(key)) == 25
    assert h.update_array("kl/exact_per_sequence")[0] == pytest.approx(0.0, abs=1e-4)
    for p, q in zip(ref_state, P.sft.parameters()):
        assert torch.equal(p, q)
    again = rloo.train(P, steps=2, batch_size=8, num_generations=4, lr=3e-3, beta=0.05, seed=0)
    assert again.history.updates["loss"] == h.updates["loss"][:2]


@pytest.mark.parametrize("kwargs, name", [({"num_generations": 1}, "num_generations"), ({"beta": -1}, "beta"), ({"lr": 0}, "lr"),
                                          ({"steps": 1.5}, "steps"), ({"progress": 1}, "progress")])
def test_train_bad_arguments(prepared, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        rloo.train(prepared, **kwargs)


def test_interrupt_gives_the_partial_result(prepared):
    from rlnotes.trainer import TrainingInterrupted

    calls = []

    def reward(prompts, responses):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return prepared.task.true_rewards(prompts, responses)

    with pytest.raises(TrainingInterrupted) as stop:
        rloo.train(prepared, reward_fn=reward, steps=5, batch_size=2, num_generations=2, seed=0)
    assert len(stop.value.result.history) == 1


def _count_policy_passes(monkeypatch, ref):
    """Count the forward passes of the policy (any model but ``ref``) through rlnotes.lm's entry points."""
    from rlnotes import lm
    calls = []
    for name in ("group_response_logits", "token_logprobs"):
        fn = getattr(lm, name)
        monkeypatch.setattr(lm, name, lambda model, *a, _fn=fn, **k: (calls.append(1) if model is not ref else None)
                            or _fn(model, *a, **k))
    return calls


@pytest.mark.parametrize("trainer", ["rloo", "grpo"])
def test_one_update_reuses_the_scoring_pass(prepared, monkeypatch, trainer):
    """One gradient step per batch: sample_groups' scoring pass keeps its graph and serves the update
    (one policy forward fewer per step); the run equals recomputing the pass; and it is off where the
    step would not see the scoring parameters (two epochs, minibatches) or dropout is active."""
    from rlnotes import grpo
    train = (lambda **kw: rloo.train(prepared, num_generations=4, **kw)) if trainer == "rloo" else \
        (lambda **kw: grpo.train(prepared, num_generations=4, **kw))
    kw = dict(steps=3, batch_size=4, lr=3e-3, seed=0)
    calls = _count_policy_passes(monkeypatch, prepared.sft)
    reused = train(**kw)
    assert len(calls) == 3 * 1  # per step: the scoring pass only
    calls.clear()
    monkeypatch.setattr(rloo if trainer == "rloo" else grpo, "reuses_scoring_pass", lambda *a: False)
    recomputed = train(**kw)
    assert len(calls) == 3 * 2
    for key in ("loss", "reward", "kl/exact_per_sequence", "entropy"):
        torch.testing.assert_close(torch.tensor(reused.history.update_array(key)),
                                   torch.tensor(recomputed.history.update_array(key)), rtol=1e-4, atol=1e-6)
    for a, b in zip(reused.model.parameters(), recomputed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    monkeypatch.undo()


# ------------------------------------------------------------- bad input

def _run(prepared, reward_fn=None, **kw):
    return rloo.train(prepared, reward_fn=reward_fn, **{"steps": 1, "batch_size": 2, "num_generations": 2, "seed": 0, **kw})


def test_reward_fn_must_return_one_number_per_response(tiny_prepared):
    with pytest.raises(ValueError, match=r"reward_fn must return one number per response \(4\).*got 8 values"):
        _run(tiny_prepared, lambda xs, ys: torch.arange(2.0 * len(ys)))
    with pytest.raises(ValueError, match=r"reward_fn must return one number per response \(4\).*shape \(4, 1\)"):
        _run(tiny_prepared, lambda xs, ys: np.zeros((len(ys), 1)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_reward_fn_nan_or_inf_is_refused(tiny_prepared, bad):
    def reward(xs, ys):
        r = torch.zeros(len(ys))
        r[1] = bad
        return r

    with pytest.raises(ValueError, match=r"reward_fn must return finite numbers; got NaN or inf for responses \[1\]"):
        _run(tiny_prepared, reward)


@pytest.mark.parametrize("convert", [lambda r: r.tolist(), lambda r: tuple(r.tolist()), lambda r: r.numpy(),
                                     lambda r: r.double().numpy(), lambda r: [torch.tensor(x) for x in r.tolist()]],
                         ids=["list", "tuple", "numpy-float32", "numpy-float64", "list-of-0d-tensors"])
def test_reward_fn_may_return_any_sequence_of_numbers(tiny_prepared, convert):
    def as_tensor(xs, ys):
        return tiny_prepared.task.true_rewards(xs, ys) * 0.5

    as_tensor_run = _run(tiny_prepared, as_tensor, steps=2)
    converted = _run(tiny_prepared, lambda xs, ys: convert(as_tensor(xs, ys)), steps=2)
    assert converted.history.updates["loss"] == as_tensor_run.history.updates["loss"]
    assert converted.history.updates["reward"] == as_tensor_run.history.updates["reward"]


@pytest.mark.parametrize("returned, error, what", [
    (None, TypeError, "NoneType None"), ("good", TypeError, "str 'good'"), ({"a": 1.0}, TypeError, "dict"),
    (["a", "b", "c", "d"], TypeError, "list"), ([True, False, True, False], TypeError, "torch.bool"),
    ([[1.0], [2.0], [3.0], [4.0]], ValueError, r"shape \(4, 1\)"), (1.0, ValueError, "got one number")])
def test_reward_fn_returning_anything_else_is_refused(tiny_prepared, returned, error, what):
    with pytest.raises(error, match=rf"reward_fn must return one number per response \(4\).*{what}"):
        _run(tiny_prepared, lambda xs, ys: returned)


def test_train_refuses_what_is_not_a_prepared_or_a_reward_function(tiny_prepared):
    import dataclasses

    with pytest.raises(TypeError, match=r"prepared must be a Prepared \(from prepare.prepare\), got NoneType"):
        rloo.train(None)
    with pytest.raises(TypeError, match="prepared must be a Prepared .* got dict"):
        rloo.train(vars(tiny_prepared))
    with pytest.raises(ValueError, match="prepared is a partial Prepared .*reward_model is None"):
        rloo.train(dataclasses.replace(tiny_prepared, reward_model=None))
    with pytest.raises(TypeError, match="reward_fn must be a function .* got int 3"):
        rloo.train(tiny_prepared, reward_fn=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rloo_advantages_refuse_nan_and_inf(bad):
    with pytest.raises(ValueError, match=r"rewards must be finite \(it holds NaN or inf\)"):
        rloo.rloo_advantages(torch.tensor([[1.0, bad, 0.0]]))


def test_rloo_advantages_types():
    r = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.equal(rloo.rloo_advantages([[1.0, 2.0, 4.0]]), rloo.rloo_advantages(r))    # a list, as a tensor
    assert torch.equal(rloo.rloo_advantages(torch.tensor([[1, 2, 4]])), rloo.rloo_advantages(r))  # integers
    with pytest.raises(TypeError, match="rewards must hold real numbers, got torch.bool"):
        rloo.rloo_advantages(torch.tensor([[True, False]]))
    with pytest.raises(TypeError, match="rewards must be a .* got list"):
        rloo.rloo_advantages([["a", "b"]])


def test_rloo_loss_refuses_no_response_non_tensors_and_nan():
    with pytest.raises(ValueError, match="rloo_loss needs at least one response, got N = 0"):
        rloo.rloo_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    with pytest.raises(TypeError, match="logp must be a tensor"):
        rloo.rloo_loss([0.0], torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="advantages must be finite"):
        rloo.rloo_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, float("nan")]))


def test_exact_estimator_moments_refuses_a_k_that_does_not_fit():
    probs, r = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([6.0, 5.0, 3.0])
    with pytest.raises(ValueError, match=r"k = 16 needs a sum over all 3\^16 draws, about .* GiB; .*MAX_EXACT_BYTES "
                                         r"= 1 GiB: use k <= 1[0-9] for K = 3"):
        rloo.exact_estimator_moments(probs, r, k=16)
    with pytest.raises(ValueError, match="k = 10000000000"):
        rloo.exact_estimator_moments(probs, r, k=10**10)
    with pytest.raises(ValueError, match="k <= ") as caught:
        rloo.exact_estimator_moments([0.5, 0.5], [1.0, 0.0], 40)
    largest = int(str(caught.value).rsplit("k <= ", 1)[1].split()[0])

    def nbytes(k):  # four float64 tensors of 2^k draws x k samples x K = 2 responses
        return 4 * 8 * 2 ** k * k * 2

    assert nbytes(largest) <= rloo.MAX_EXACT_BYTES < nbytes(largest + 1)


@pytest.mark.parametrize("probs, rewards, match", [
    ([0.5, float("nan")], [1.0, 0.0], r"probs must be finite"),
    ([0.5, 0.7], [1.0, 0.0], "probs must be >= 0 and sum to 1"),
    ([1.5, -0.5], [1.0, 0.0], "probs must be >= 0"), ([[0.5, 0.5]], [[1.0, 0.0]], "probs must be a 1-D distribution"),
    ([], [], "probs must be a 1-D distribution"), ([0.5, 0.5], [1.0, float("inf")], "rewards must be finite")])
def test_exact_estimator_moments_refuses_what_is_not_a_distribution(probs, rewards, match):
    with pytest.raises(ValueError, match=match):
        rloo.exact_estimator_moments(probs, rewards, 2)


def test_exact_estimator_moments_accepts_lists():
    a = rloo.exact_estimator_moments([0.5, 0.3, 0.2], [6.0, 5.0, 3.0], 2)
    b = rloo.exact_estimator_moments(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
                                     torch.tensor([6.0, 5.0, 3.0], dtype=torch.float64), 2)
    assert torch.equal(a["leave_one_out"]["mean"], b["leave_one_out"]["mean"])


def test_gradient_variance_bad_arguments(tiny_prepared):
    P, prompts = tiny_prepared, tiny_prepared.eval_prompts[:2]
    policy = trainable_copy(P.sft)
    with pytest.raises(ValueError, match="k must be >= 2, got 1"):
        rloo.gradient_variance(policy, P, prompts, k=1)
    with pytest.raises(ValueError, match="shift must be finite"):
        rloo.gradient_variance(policy, P, prompts, shift=float("nan"))
    with pytest.raises(TypeError, match="prepared must be a Prepared"):
        rloo.gradient_variance(policy, None, prompts)


def test_ctrl_c_inside_an_update_hands_back_the_policy_in_eval_mode(tiny_prepared, ctrl_c_raises):
    """A SIGINT during step 1 is held until the update ends; the update and its log entry are both in
    the partial result, and the policy is handed back in eval mode (as after a complete run)."""
    import signal

    from rlnotes.trainer import TrainingInterrupted

    def reward(xs, ys):
        signal.raise_signal(signal.SIGINT)
        return tiny_prepared.task.true_rewards(xs, ys)

    with pytest.raises(KeyboardInterrupt) as caught:
        _run(tiny_prepared, reward, steps=3)
    assert isinstance(caught.value, TrainingInterrupted)
    result = caught.value.result
    assert len(result.history) == 1 and not result.model.training
    assert not all(torch.equal(p, q) for p, q in zip(result.model.parameters(), tiny_prepared.sft.parameters()))


def test_rloo_loss_refuses_non_finite_log_probabilities():
    T = torch.tensor
    with pytest.raises(ValueError, match=r"logp must be finite"):
        rloo.rloo_loss(T([float("nan")]), T([-1.]), T([1.]))
    with pytest.raises(ValueError, match=r"logp_old must be finite"):
        rloo.rloo_loss(T([-1.]), T([float("-inf")]), T([1.]))


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

@pytest.mark.parametrize("probs", ["abc", None, [True, False], [1j, 0.0]])
def test_exact_estimator_moments_refuses_probs_that_are_not_numbers(probs):
    with pytest.raises(TypeError, match=r"probs must be a 1-D tensor, array or list of real numbers"):
        rloo.exact_estimator_moments(probs, [1.0, 0.0], 2)


def test_rloo_loss_refuses_nan_logp():
    with pytest.raises(ValueError, match=r"logp must be finite"):
        rloo.rloo_loss(torch.tensor([float("nan")]), torch.tensor([-1.0]), torch.tensor([1.0]))


def test_gradient_variance_refuses_a_frozen_policy(tiny_prepared):
    with pytest.raises(ValueError, match=r"policy has no parameter that requires a gradient.*trainable_copy"):
        rloo.gradient_variance(tiny_prepared.sft, tiny_prepared, ["phone review :"], k=2, repeats=2, value_samples=2)


def test_gradient_variance_refuses_huge_groups(tiny_prepared):
    with pytest.raises(ValueError, match=r"len\(prompts\) \* k .* MAX_GROUP_SAMPLES .* got len\(prompts\)=1 x k="):
        rloo.gradient_variance(trainable_copy(tiny_prepared.sft), tiny_prepared, ["phone review :"], k=10**6)


def test_train_reward_fn_of_one_argument_and_a_value_too_large_for_float32(tiny_prepared):
    with pytest.raises(TypeError, match=r"reward_fn must be a function \(prompts, responses\)"):
        rloo.train(tiny_prepared, reward_fn=lambda y: [1.0] * len(y), steps=1, batch_size=2, num_generations=2)
    with pytest.raises(ValueError, match=r"reward_fn must return numbers that fit float32"):
        rloo.train(tiny_prepared, reward_fn=lambda x, y: np.array([1e39] + [0.0] * (len(y) - 1)), steps=1,
                   batch_size=2, num_generations=2)


def test_gradient_variance_refuses_a_reward_model_as_policy(tiny_prepared):
    rm = trainable_copy(tiny_prepared.reward_model)
    with pytest.raises(TypeError, match=r"policy must be a causal LM \(its forward .* got a RewardModel"):
        rloo.gradient_variance(rm, tiny_prepared, ["phone review :"], k=2, repeats=2, value_samples=2)


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_train_refuses_an_fp16_sft_naming_prepared_sft(tiny_prepared):
    import copy, dataclasses
    half = dataclasses.replace(tiny_prepared, sft=copy.deepcopy(tiny_prepared.sft).half())
    with pytest.raises(TypeError, match=r"prepared\.sft has torch\.float16 parameters"):
        rloo.train(half, steps=1, batch_size=2, num_generations=2)


def test_train_refuses_steps_above_max_steps(tiny_prepared):
    with pytest.raises(ValueError, match=r"steps must be <= MAX_STEPS \(100000\), got 1000000000"):
        rloo.train(tiny_prepared, steps=10**9, batch_size=2, num_generations=2)


def test_train_names_a_reward_fn_that_empties_its_responses(tiny_prepared):
    def empties(prompts, responses):
        responses.clear()
        return []
    with pytest.raises(ValueError, match=r"reward_fn must return one number per response \(4\).*got 0 values"):
        rloo.train(tiny_prepared, reward_fn=empties, steps=1, batch_size=2, num_generations=2)
