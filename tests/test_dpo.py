import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlnotes.dpo import (dpo_gradient, dpo_loss, implicit_reward, log_optimal_policy, log_partition,
                         optimal_policy)


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

from rlnotes import dpo, lm  # noqa: E402


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


# ----- issue 27: the caller's models, precision, containers, callbacks, interrupts ----------------

import copy  # noqa: E402

from rlnotes.rlhf import Preferences  # noqa: E402
from rlnotes.trainer import TrainingInterrupted  # noqa: E402

TINY_RUN = dict(beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0)


def _flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def _fresh(tok, seed=3):
    return lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=seed)


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
