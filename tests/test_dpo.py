"""rlnotes.dpo: the optimal policy and its partition function, the DPO loss and its gradient, the
trainer on a tiny causal LM (and what it does to the caller's models, its containers, callbacks and
interrupts), DPO on a one-token model (``fit_categorical``), the work of one update counted network
by network (``count_passes``, ``update_work``), the RLHF objective, and the reward-KL frontier over
seeds (``frontier_point``, ``frontier``)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlnotes import dpo, lm, models, rlhf, sampling, sentiment
from rlnotes.dpo import (count_passes, dpo_gradient, dpo_loss, fit_categorical, implicit_reward, log_optimal_policy,
                         log_partition, optimal_policy, update_work)
from rlnotes.reward import Preferences
from rlnotes.trainer import TrainingInterrupted


def _problem(seed=0, prompts=4, responses=7):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(responses), size=prompts)
    r = rng.normal(size=(prompts, responses))
    return ref, r


# ----- optimal_policy / log_partition ---------------------------------------------------------

def test_optimal_policy_matches_direct_computation():
    ref, r = _problem()
    beta = 0.7
    unnorm = ref * np.exp(r / beta)
    np.testing.assert_allclose(optimal_policy(ref, r, beta), unnorm / unnorm.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r, beta), np.log(unnorm.sum(-1)), rtol=1e-12)
    np.testing.assert_allclose(log_optimal_policy(ref, r, beta), np.log(unnorm / unnorm.sum(-1, keepdims=True)),
                               rtol=1e-10)


def test_optimal_policy_is_the_maximiser():
    ref, r = _problem(1, prompts=3, responses=5)
    beta = 0.5
    pi_star = optimal_policy(ref, r, beta)

    def objective(pi):
        return (pi * r).sum(-1) - beta * (pi * np.log(pi / ref)).sum(-1)

    rng = np.random.default_rng(2)
    for _ in range(200):
        pi = rng.dirichlet(np.ones(5), size=3)
        gap = objective(pi_star) - objective(pi)
        kl = (pi * np.log(pi / pi_star)).sum(-1)
        np.testing.assert_allclose(gap, beta * kl, atol=1e-10)   # gap = beta KL(pi || pi*) >= 0
        assert (gap >= 0).all()


def test_optimal_policy_large_reward_over_beta_is_finite():
    ref, r = _problem(3)
    r = r * 1e4
    pi = optimal_policy(ref, r, 1e-3)          # r / beta up to ~1e7: exp would overflow
    log_z = log_partition(ref, r, 1e-3)
    assert np.isfinite(pi).all() and np.isfinite(log_z).all()
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-12)
    # all mass on the best response; log Z ~ max (log pi_ref + r / beta)
    assert (pi.argmax(-1) == r.argmax(-1)).all()
    np.testing.assert_allclose(log_z, (np.log(ref) + r / 1e-3).max(-1), rtol=1e-9)


def test_optimal_policy_beta_limits():
    ref, r = _problem(4)
    np.testing.assert_allclose(optimal_policy(ref, r, 1e6), ref, atol=1e-5)   # beta -> inf: pi_ref
    # shifting r by a per-prompt constant changes log Z by c / beta, not pi*
    c = np.arange(4.0)[:, None]
    np.testing.assert_allclose(optimal_policy(ref, r + c, 0.3), optimal_policy(ref, r, 0.3), rtol=1e-12)
    np.testing.assert_allclose(log_partition(ref, r + c, 0.3), log_partition(ref, r, 0.3) + c[:, 0] / 0.3)


def test_optimal_policy_torch_and_zero_ref_probs():
    ref = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0, 100.0]], dtype=torch.float64)
    pi = optimal_policy(ref, r, 1.0)
    assert torch.is_tensor(pi) and pi[0, 2] == 0     # no mass where pi_ref has none
    torch.testing.assert_close(pi.sum(-1), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(log_partition(ref, r, 1.0), torch.log(0.5 * torch.exp(r[:, 0]) + 0.5 * torch.exp(r[:, 1])))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_optimal_policy_bad_beta(beta):
    ref, r = _problem()
    with pytest.raises(ValueError, match="beta"):
        optimal_policy(ref, r, beta)
    with pytest.raises(ValueError, match="beta"):
        log_partition(ref, r, beta)


def test_optimal_policy_bad_inputs():
    ref, r = _problem()
    with pytest.raises(ValueError, match="shapes must match"):
        optimal_policy(ref, r[:, :3], 1.0)
    with pytest.raises(ValueError, match="ref_probs must sum to 1"):
        optimal_policy(ref * 2, r, 1.0)
    bad = ref.copy()
    bad[0, :2] = [-0.1, bad[0, 0] + bad[0, 1] + 0.1]
    with pytest.raises(ValueError, match="ref_probs must be >= 0"):
        optimal_policy(bad, r, 1.0)
    r_nan = r.copy()
    r_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="rewards must be finite"):
        log_partition(ref, r_nan, 1.0)


# ----- dpo_loss / implicit_reward ------------------------------------------------------------

def test_dpo_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 5 for _ in range(4))
    beta = 0.1
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    expected = -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr))))
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(chosen, beta * (pc - rc))
    torch.testing.assert_close(rejected, beta * (pr - rr))
    torch.testing.assert_close(implicit_reward(pc, rc, beta), chosen)


def test_dpo_loss_is_bt_nll_of_implicit_reward_and_log2_at_reference():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, generator=g) for _ in range(4))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, 0.5)
    torch.testing.assert_close(losses, -F.logsigmoid(chosen - rejected))
    losses0, c0, r0 = dpo_loss(rc, rr, rc, rr, 0.5)          # pi = pi_ref
    torch.testing.assert_close(losses0, torch.full((8,), math.log(2)))
    assert (c0 == 0).all() and (r0 == 0).all()


def test_dpo_loss_extreme_logps_finite_and_rewards_detached():
    pc = torch.tensor([-1e4, 0.0, -1e30, -3e3], requires_grad=True)
    pr = torch.tensor([0.0, -1e4, -1e-3, -1e30], requires_grad=True)
    ref = torch.zeros(4)
    losses, chosen, rejected = dpo_loss(pc, pr, ref, ref, 1.0)
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses[:2], torch.tensor([1e4, 0.0]))
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_dpo_loss_bad_beta(beta):
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta)


def test_dpo_loss_bad_shapes_and_non_finite():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_loss(x, torch.zeros(4), x, x, 0.1)
    with pytest.raises(ValueError, match="ref_rejected_logps must be finite"):
        dpo_loss(x, x, x, torch.tensor([0.0, float("-inf"), 0.0]), 0.1)
    with pytest.raises(ValueError, match="beta"):
        implicit_reward(x, x, 0.0)


# ----- dpo_gradient -------------------------------------------------------------------------

def test_dpo_gradient_matches_autograd():
    torch.manual_seed(0)
    vocab, batch = 6, 10
    logits = torch.randn(vocab, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(vocab), -1)
    yw, yl = torch.randint(vocab, (batch,)), torch.randint(vocab, (batch,))
    logp = torch.log_softmax(logits, -1)
    args = (logp[yw], logp[yl], ref_logp[yw], ref_logp[yl], 0.3)
    (expected,) = torch.autograd.grad(dpo_loss(*args)[0].mean(), [logits], retain_graph=True)
    (got,) = dpo_gradient([logits], *args)
    torch.testing.assert_close(got, expected)


# ----- the trainer on a tiny causal LM -------------------------------------------------------


def test_pair_logps_match_separate_sequence_logprobs(tiny):
    model, tok, data = tiny
    c, r = dpo.pair_logps(model, data)
    c_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["chosen_ids"], data["chosen_mask"])
    r_alone = lm.sequence_logprob(model, data["prompt_ids"], data["prompt_mask"], data["rejected_ids"],
                                  data["rejected_mask"])
    torch.testing.assert_close(c, c_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, r_alone, rtol=1e-5, atol=1e-5)
    # trimming all-padding columns and batching differently change nothing
    ref_all = dpo.reference_logps(model, data)
    ref_small = dpo.reference_logps(model, data, batch_size=3)
    torch.testing.assert_close(ref_all[0], c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref_small[1], ref_all[1], rtol=1e-5, atol=1e-5)
    assert ref_all[0].dtype == torch.float32 and ref_all[0].shape == (8,)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        dpo.reference_logps(model, data, batch_size=0)


def test_preference_metrics_at_reference(tiny):
    model, _, data = tiny
    m = dpo.preference_metrics(model, model, data, beta=0.1)
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.5)          # every pair a tie
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_train_starts_at_log2_learns_the_pairs_and_keeps_ref_frozen(tiny):
    model, _, data = tiny
    before = [p.clone() for p in model.parameters()]
    seen = []
    out = dpo.train(None, model, data, beta=0.5, epochs=30, batch_size=4, lr=1e-2, seed=0,
                    eval_data=data, eval_every=20, callback=lambda p: seen.append(1) or {"x": 1.0})
    policy, h = out.model, out.history
    assert isinstance(out.config, dpo.DPOConfig) and out.config.eval_every == 20
    u = h.updates
    assert u["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert u["rewards/chosen"][0] == 0 and u["rewards/rejected"][0] == 0
    assert u["rewards/accuracies"][0] == 0.5  # pi = pi_ref: every pair a tie, counted one half
    assert len(u["loss"]) == 60 and all(k in u for k in ("rewards/accuracies", "rewards/margins", "logps/chosen",
                                                          "logps/rejected", "eval/accuracy", "eval/x"))
    assert u["eval/accuracy"][-1] == 1.0 and u["eval/loss"][-1] < 0.2
    assert u["eval/step"] == [0.0, 20.0, 40.0, 60.0] and len(seen) == 4
    assert policy is not model
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    # deterministic
    h2 = dpo.train(None, model, data, beta=0.5, epochs=2, batch_size=4, lr=1e-2, seed=0).history
    assert h2.updates["loss"] == u["loss"][:4]


def test_train_bad_arguments(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match="beta"):
        dpo.train(None, model, data, beta=0.0)
    with pytest.raises(ValueError, match="lr"):
        dpo.train(None, model, data, lr=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        dpo.train(None, model, data, epochs=0)
    with pytest.raises(ValueError, match="policy must not be ref"):
        dpo.train(model, model, data)
    with pytest.raises(TypeError, match="betta"):
        dpo.train(None, model, data, betta=0.1)
    with pytest.raises(ValueError, match="data must be a dict"):
        dpo.train(None, model, {"prompt_ids": data["prompt_ids"]})
    bad = dict(data, chosen_ids=data["chosen_ids"][:3], chosen_mask=data["chosen_mask"][:3])
    with pytest.raises(ValueError, match="same number"):
        dpo.train(None, model, bad)


# ----- the caller's models, precision, containers, callbacks, interrupts -------------------------

TINY_RUN = dict(beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0)


def _flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def _fresh(tok, seed=3):
    return models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=seed)


def test_train_trains_only_what_the_caller_left_trainable(tiny):
    ref, tok, data = tiny
    policy = _fresh(tok).eval()
    policy.transformer.wte.requires_grad_(False)          # the user froze the embeddings
    frozen, before = policy.transformer.wte.weight.clone(), _flags(policy)
    head = policy.transformer.ln_f.weight.clone()
    dpo.train(policy, ref, data, **TINY_RUN)
    assert torch.equal(policy.transformer.wte.weight, frozen)        # not trained ...
    assert not torch.equal(policy.transformer.ln_f.weight, head)     # ... the rest is
    assert _flags(policy) == before                                   # still frozen, still in eval mode


def test_train_refuses_a_policy_with_nothing_trainable(tiny):
    ref, tok, data = tiny
    with pytest.raises(ValueError, match=r"policy has no trainable parameter \(requires_grad is False"):
        dpo.train(_fresh(tok).requires_grad_(False), ref, data, **TINY_RUN)


def test_train_leaves_the_callers_ref_and_policy_as_found(tiny):
    _, tok, data = tiny
    ref = _fresh(tok, seed=0)                  # trainable, and in mixed modes
    ref.eval()
    ref.lm_head.train()
    before = _flags(ref)
    out = dpo.train(None, ref, data, eval_data=data, **TINY_RUN)
    assert _flags(ref) == before
    assert not out.model.training and all(p.requires_grad for p in out.model.parameters())  # the copy: eval mode
    policy = _fresh(tok).train()
    dpo.train(policy, ref, data, **TINY_RUN)
    assert policy.training and _flags(ref) == before


def test_train_restores_the_callers_models_after_an_error(tiny, monkeypatch):
    ref, tok, data = tiny
    policy = _fresh(tok).eval()
    policy.transformer.wte.requires_grad_(False)
    before, ref_before = _flags(policy), _flags(ref)

    def failing_step(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(dpo, "dpo_step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        dpo.train(policy, ref, data, **TINY_RUN)
    assert _flags(policy) == before and _flags(ref) == ref_before


def test_reference_logps_and_preference_metrics_restore_mixed_modes(tiny):
    _, tok, data = tiny
    model = _fresh(tok, seed=0).train()
    model.transformer.h[0].eval()
    before = _flags(model)
    dpo.reference_logps(model, data)
    assert _flags(model) == before
    dpo.preference_metrics(model, model, data, beta=0.1)
    assert _flags(model) == before
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module"):
        dpo.reference_logps(None, data)


def test_train_refuses_float16_where_it_trains(tiny):
    ref, tok, data = tiny
    with pytest.raises(TypeError, match=r"ref has torch.float16 parameters.*allowed: float32, float64 or bfloat16"):
        dpo.train(None, copy.deepcopy(ref).half(), data, **TINY_RUN)
    with pytest.raises(TypeError, match="policy has torch.float16 parameters"):
        dpo.train(_fresh(tok).half(), ref, data, **TINY_RUN)
    # the neighbours: a bfloat16 policy trains; a float16 reference that is only run is accepted
    out = dpo.train(_fresh(tok).to(torch.bfloat16), ref, data, **TINY_RUN)
    assert np.isfinite(out.history.update_array("loss")).all()
    out = dpo.train(_fresh(tok), copy.deepcopy(ref).half(), data, **TINY_RUN)
    assert np.isfinite(out.history.update_array("loss")).all()


def test_train_refuses_data_in_the_wrong_containers(tiny):
    ref, tok, data = tiny
    with pytest.raises(TypeError, match=r"data\['prompt_ids'\] must be a 2-D integer torch.Tensor .* got list"):
        dpo.train(None, ref, {k: v.tolist() for k, v in data.items()}, **TINY_RUN)
    prefs = Preferences(["a :"], ["good ."], ["bad ."], torch.zeros(1), torch.zeros(1))
    with pytest.raises(TypeError, match=r"data must be a dict with the tensors .* got Preferences"):
        dpo.train(None, ref, prefs, **TINY_RUN)
    with pytest.raises(TypeError, match=r"data\['chosen_ids'\] must be a 2-D integer torch.Tensor .* torch.float32"):
        dpo.train(None, ref, dict(data, chosen_ids=data["chosen_ids"].float()), **TINY_RUN)
    with pytest.raises(ValueError, match=r"data\['rejected_mask'\] must have the shape of data\['rejected_ids'\]"):
        dpo.train(None, ref, dict(data, rejected_mask=data["rejected_mask"][:, :2]), **TINY_RUN)


def test_train_checks_eval_data_like_data(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match="eval_data must be a dict with the tensors .* got list"):
        dpo.train(None, ref, data, eval_data=[data], **TINY_RUN)
    with pytest.raises(ValueError, match=r"eval_data must be a dict .* missing \['chosen_ids'"):
        dpo.train(None, ref, data, eval_data={k: v for k, v in data.items() if k != "chosen_ids"}, **TINY_RUN)
    with pytest.raises(TypeError, match=r"eval_data\['prompt_mask'\] must be a 2-D integer torch.Tensor"):
        dpo.train(None, ref, data, eval_data=dict(data, prompt_mask=data["prompt_mask"][0]), **TINY_RUN)


def test_train_refuses_ref_logps_that_are_not_two_finite_tensors(tiny):
    ref, _, data = tiny
    c, r = dpo.reference_logps(ref, data)
    with pytest.raises(TypeError, match="ref_logps must be two tensors"):
        dpo.train(None, ref, data, ref_logps=(c.tolist(), r.tolist()), **TINY_RUN)
    with pytest.raises(ValueError, match="ref_logps must be finite"):
        dpo.train(None, ref, data, ref_logps=(c, torch.full_like(r, float("nan"))), **TINY_RUN)


def test_callback_none_logs_nothing_and_scalars_of_any_kind_are_numbers(tiny):
    ref, _, data = tiny
    out = dpo.train(None, ref, data, callback=lambda policy: None, **TINY_RUN)
    assert [k for k in out.history.updates if k.startswith("eval/")] == ["eval/step"]
    values = {"np32": np.float32(0.25), "np_int": np.int64(3), "np0d": np.array(1.5), "torch0d": torch.tensor(2.5),
              "int": 4, "float": 0.5}
    u = dpo.train(None, ref, data, callback=lambda policy: values, **TINY_RUN).history.updates
    assert {k: u[f"eval/{k}"] for k in values} == {"np32": [0.25], "np_int": [3.0], "np0d": [1.5], "torch0d": [2.5],
                                                    "int": [4.0], "float": [0.5]}


@pytest.mark.parametrize("returned, error, match", [
    ({"r": "high"}, TypeError, r"callback's value for 'r' must be a real number .* got 'high'"),
    ({"ok": True}, TypeError, r"callback's value for 'ok' must be a real number .* got True"),
    ({"v": torch.ones(2)}, TypeError, "callback's value for 'v' must be a real number"),
    ({"loss": 1.0}, ValueError, r"callback's key 'loss' clashes with the trainer's own eval/loss"),
    ([1.0], TypeError, r"callback must return a dict of numbers \(or None\), got list"),
])
def test_callback_values_that_are_not_numbers_are_refused_by_name(tiny, returned, error, match):
    ref, _, data = tiny
    with pytest.raises(error, match=match):
        dpo.train(None, ref, data, callback=lambda policy: returned, **TINY_RUN)


def test_callback_must_be_callable(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match="callback must be a function"):
        dpo.train(None, ref, data, callback={"x": 1.0}, **TINY_RUN)


def test_ctrl_c_in_the_reference_pass_raises_training_interrupted(tiny):
    ref, _, data = tiny
    ref = copy.deepcopy(ref)

    def interrupt(module, args, kwargs):
        raise KeyboardInterrupt

    handle = ref.register_forward_pre_hook(interrupt, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            dpo.train(None, ref, data, **TINY_RUN)
    finally:
        handle.remove()
    assert isinstance(stop.value, TrainingInterrupted) and "after 0 complete updates" in str(stop.value)
    out = stop.value.result
    assert len(out.history) == 0 and out.model is not ref and not out.model.training
    assert all(torch.equal(p, q) for p, q in zip(out.model.parameters(), ref.parameters()))  # untrained


@pytest.mark.parametrize("pi, match", [([0.9, 0.9], r"policy_probs must sum to 1 .* got sums from 1.8 to 1.8"),
                                       ([float("nan"), 1.0], "policy_probs must be finite"),
                                       ([[0.5, 0.5], [0.2, 0.2]], r"policy_probs must sum to 1 .* from 0.4 to 1")])
def test_rlhf_objective_refuses_a_policy_that_is_not_a_distribution(pi, match):
    with pytest.raises(ValueError, match=match):
        dpo.rlhf_objective(pi, [0.5, 0.5], [0.0, 1.0], 1.0)
    # the neighbours: a float32 softmax over many responses, a list of floats
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ref = np.full(50, 1 / 50)
    assert torch.isfinite(dpo.rlhf_objective(torch.softmax(logits, -1), ref, np.zeros(50), 0.5)).all()
    assert np.isclose(dpo.rlhf_objective([0.3, 0.7], [0.5, 0.5], [0.0, 1.0], 1.0),
                      0.7 - (0.3 * np.log(0.6) + 0.7 * np.log(1.4)))


def test_preference_losses_name_a_list_and_a_nan():
    x = torch.zeros(3)
    with pytest.raises(TypeError, match="policy_chosen_logps must be a torch.Tensor of log-probabilities, got list"):
        dpo_loss([0.0, 0.0, 0.0], x, x, x, 0.1)
    with pytest.raises(ValueError, match="policy_logps must be finite"):
        implicit_reward(torch.tensor([0.0, float("nan")]), torch.zeros(2), 0.1)


def test_dpo_gradient_refuses_no_pairs_no_graph_and_mismatched_shapes():
    theta = torch.zeros(4, requires_grad=True)
    logp = torch.log_softmax(theta, -1)
    e = torch.zeros(0)
    with pytest.raises(ValueError, match="policy_chosen_logps must hold at least one pair"):
        dpo_gradient([theta], logp[:0], logp[:0], e, e, 0.1)
    with pytest.raises(ValueError, match="must be computed from params"):
        dpo_gradient([theta], logp.detach(), logp.detach(), logp.detach(), logp.detach(), 0.1)
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_gradient([theta], logp, logp[:2], logp.detach(), logp.detach(), 0.1)


@pytest.mark.parametrize("ref_probs, winners, match", [
    ([0.5, float("nan")], [0], "ref_probs must be a distribution"),
    ([0.5, 0.5], [True], "winners and losers must be non-empty 1-D integer arrays"),
])
def test_fit_categorical_refuses_nan_probabilities_and_bool_tokens(ref_probs, winners, match):
    with pytest.raises(ValueError, match=match):
        dpo.fit_categorical(ref_probs, winners, [1], 1.0, epochs=1, batch_size=1)


def test_pair_logps_and_frontier_point_name_a_bad_batch_or_eval_data(tiny, tiny_prepared):
    model, _, data = tiny
    with pytest.raises(ValueError, match=r"batch must be a dict with the tensors .* missing \['rejected_mask'\]"):
        dpo.pair_logps(model, {k: v for k, v in data.items() if k != "rejected_mask"})
    P = tiny_prepared
    with pytest.raises(TypeError, match="eval_data must be a dict with the tensors .* got list"):   # before training
        dpo.frontier_point(P, P.train_prefs.encode(P.tokenizer), "DPO", 0.1, eval_data=[data], batch_size=8)
    with pytest.raises(TypeError, match="ref must be a torch.nn.Module"):
        with dpo.count_passes(None):
            pass


# ----- fit_categorical ------------------------------------------------------------------------------

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


# ----- count_passes ---------------------------------------------------------------------------------

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
    with count_passes(P.sft, P.reward_model) as c, torch.no_grad():
        P.reward_model(p_ids, p_mask, r_ids, r_mask)        # a GPT-2 body and a linear head inside
    assert c["reward model"]["forward"] == 1 and c["policy"]["forward"] == 0 and c["value head"]["forward"] == 0


# ----- update_work ----------------------------------------------------------------------------------

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


# ----- rlhf_objective -------------------------------------------------------------------------------

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


# ----- the reward-KL frontier over seeds (frontier_point, frontier) ---------------------------------

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


# ----- a Ctrl-C inside a step, the reference as the policy (16 pairs) -------------------------------

@pytest.fixture(scope="module")
def tiny_pairs():
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    ref = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0).requires_grad_(False)
    prompts = ["review of the movie :", "so , the book :", "game review :", "my thoughts on the cafe :"] * 4
    chosen = ["it was great .", "great , good and fun .", "lovely .", "the price was superb ."] * 4
    rejected = ["it was awful and bad .", "dull .", "the story is boring but weak .", "poor ."] * 4
    prefs = Preferences(prompts, chosen, rejected, torch.zeros(16), torch.zeros(16))
    return ref, prefs.encode(tok)


def test_ctrl_c_inside_a_dpo_step_finishes_it_then_stops_with_the_result(monkeypatch, tiny_pairs, ctrl_c_raises,
                                                                         sigint_on_call):
    ref, data = tiny_pairs
    kw = dict(epochs=2, batch_size=4, lr=1e-2, seed=0)  # 8 steps
    # the weights after every step of an uninterrupted run
    snapshots = []
    original_step = dpo.dpo_step

    def recording_step(policy, *args):
        stats = original_step(policy, *args)
        snapshots.append([p.detach().clone() for p in policy.parameters()])
        return stats

    monkeypatch.setattr(dpo, "dpo_step", recording_step)
    full = dpo.train(None, ref, data, **kw)
    assert len(snapshots) == 8
    # the same run, with Ctrl-C at the start of the third step
    calls = []
    monkeypatch.setattr(dpo, "dpo_step", sigint_on_call(original_step, 3, calls))
    with pytest.raises(TrainingInterrupted, match="after 3 complete updates") as stop:
        dpo.train(None, ref, data, **kw)
    out = stop.value.result
    assert len(calls) == 3 and len(out.history) == 3
    assert out.history.updates["loss"] == full.history.updates["loss"][:3]
    for p, q in zip(out.model.parameters(), snapshots[2]):
        assert torch.equal(p, q)  # the weights after step 3, complete
    assert not out.model.training  # left in eval mode, as after a finished run


def test_dpo_refuses_the_reference_as_the_policy(tiny_pairs):
    ref, data = tiny_pairs
    with pytest.raises(ValueError, match="policy must not be ref itself"):
        dpo.train(ref, ref, data)


def test_optimal_policy_refuses_a_beta_so_small_that_rewards_over_beta_overflow():
    with pytest.raises(ValueError, match=r"beta must be large enough that rewards / beta is finite, got beta=1e-309"):
        dpo.optimal_policy([.5, .3, .2], [1, 0, -1], 1e-309)
    with pytest.raises(ValueError, match="beta must be large enough"):
        dpo.log_optimal_policy(torch.tensor([.5, .3, .2], dtype=torch.float64),
                               torch.tensor([1., 0., -1.], dtype=torch.float64), 1e-309)
    with pytest.raises(ValueError, match="beta must be large enough"):
        dpo.log_partition([.5, .3, .2], [1, 0, -1], 1e-309)


def test_train_refuses_a_pair_with_an_empty_chosen_response(tiny):
    ref, _, data8 = tiny
    bad = {**data8, "chosen_mask": data8["chosen_mask"].index_fill(0, torch.tensor([0]), 0)}
    with pytest.raises(ValueError, match=r"data\['chosen_mask'\] must mark at least one token .* empty chosen "
                                         r"response at pair 0"):
        dpo.train(None, ref, bad, batch_size=4)
    bad = {**data8, "rejected_mask": data8["rejected_mask"].bool().index_fill(0, torch.tensor([5]), False)}
    with pytest.raises(ValueError, match=r"data\['rejected_mask'\] .* at pair 5"):
        dpo.check_pairs(bad)
    assert dpo.check_pairs({**data8, "chosen_mask": data8["chosen_mask"].bool()}) == 8
