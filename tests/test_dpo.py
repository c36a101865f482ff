"""rlnotes.dpo: the DPO and IPO losses, DPO's gradient, the trainer on a tiny causal LM (both loss
types; what it does to the caller's models, its containers, callbacks and interrupts)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlnotes import dpo, models, pairs, sentiment
from rlnotes.dpo import dpo_gradient, dpo_loss, implicit_reward
from rlnotes.reward import Preferences
from rlnotes.trainer import TrainingInterrupted


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
    out = dpo.train(data, ref=model, beta=0.5, epochs=30, batch_size=4, lr=1e-2, seed=0,
                    eval_data=data, eval_every=20, callback=lambda p: seen.append(1) or {"x": 1.0})
    policy, h = out.model, out.history
    assert isinstance(out.config, dpo.DPOConfig) and out.config.eval_every == 20
    u = {**h.updates, **h.evals}
    assert all(k.startswith("eval/") for k in h.evals) and not any(k.startswith("eval/") for k in h.updates)
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
    h2 = dpo.train(data, ref=model, beta=0.5, epochs=2, batch_size=4, lr=1e-2, seed=0).history
    assert h2.updates["loss"] == u["loss"][:4]


def test_train_bad_arguments(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match="beta"):
        dpo.train(data, ref=model, beta=0.0)
    with pytest.raises(ValueError, match="lr"):
        dpo.train(data, ref=model, lr=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        dpo.train(data, ref=model, epochs=0)
    with pytest.raises(ValueError, match="policy must not be ref"):
        dpo.train(data, ref=model, policy=model)
    with pytest.raises(TypeError, match="betta"):
        dpo.train(data, ref=model, betta=0.1)
    with pytest.raises(ValueError, match="data must be a dict"):
        dpo.train({"prompt_ids": data["prompt_ids"]}, ref=model)
    bad = dict(data, chosen_ids=data["chosen_ids"][:3], chosen_mask=data["chosen_mask"][:3])
    with pytest.raises(ValueError, match="same number"):
        dpo.train(bad, ref=model)


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
    dpo.train(data, ref=ref, policy=policy, **TINY_RUN)
    assert torch.equal(policy.transformer.wte.weight, frozen)        # not trained ...
    assert not torch.equal(policy.transformer.ln_f.weight, head)     # ... the rest is
    assert _flags(policy) == before                                   # still frozen, still in eval mode


def test_train_refuses_a_policy_with_nothing_trainable(tiny):
    ref, tok, data = tiny
    with pytest.raises(ValueError, match=r"policy has no trainable parameter \(requires_grad is False"):
        dpo.train(data, ref=ref, policy=_fresh(tok).requires_grad_(False), **TINY_RUN)


def test_train_leaves_the_callers_ref_and_policy_as_found(tiny):
    _, tok, data = tiny
    ref = _fresh(tok, seed=0)                  # trainable, and in mixed modes
    ref.eval()
    ref.lm_head.train()
    before = _flags(ref)
    out = dpo.train(data, ref=ref, eval_data=data, **TINY_RUN)
    assert _flags(ref) == before
    assert not out.model.training and all(p.requires_grad for p in out.model.parameters())  # the copy: eval mode
    policy = _fresh(tok).train()
    dpo.train(data, ref=ref, policy=policy, **TINY_RUN)
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
        dpo.train(data, ref=ref, policy=policy, **TINY_RUN)
    assert _flags(policy) == before and _flags(ref) == ref_before


def test_train_refuses_float16_where_it_trains(tiny):
    ref, tok, data = tiny
    with pytest.raises(TypeError, match=r"ref has torch.float16 parameters.*allowed: float32, float64 or bfloat16"):
        dpo.train(data, ref=copy.deepcopy(ref).half(), **TINY_RUN)
    with pytest.raises(TypeError, match="policy has torch.float16 parameters"):
        dpo.train(data, ref=ref, policy=_fresh(tok).half(), **TINY_RUN)
    # the neighbours: a bfloat16 policy trains; a float16 reference that is only run is accepted
    out = dpo.train(data, ref=ref, policy=_fresh(tok).to(torch.bfloat16), **TINY_RUN)
    assert np.isfinite(out.history.update_array("loss")).all()
    out = dpo.train(data, ref=copy.deepcopy(ref).half(), policy=_fresh(tok), **TINY_RUN)
    assert np.isfinite(out.history.update_array("loss")).all()


def test_train_refuses_data_in_the_wrong_containers(tiny):
    ref, tok, data = tiny
    with pytest.raises(TypeError, match=r"data\['prompt_ids'\] must be a 2-D integer torch.Tensor .* got list"):
        dpo.train({k: v.tolist() for k, v in data.items()}, ref=ref, **TINY_RUN)
    prefs = Preferences(["a :"], ["good ."], ["bad ."], torch.zeros(1), torch.zeros(1))
    with pytest.raises(TypeError, match=r"data must be a dict with the tensors .* got Preferences"):
        dpo.train(prefs, ref=ref, **TINY_RUN)
    with pytest.raises(TypeError, match=r"data\['chosen_ids'\] must be a 2-D integer torch.Tensor .* torch.float32"):
        dpo.train(dict(data, chosen_ids=data["chosen_ids"].float()), ref=ref, **TINY_RUN)
    with pytest.raises(ValueError, match=r"data\['rejected_mask'\] must have the shape of data\['rejected_ids'\]"):
        dpo.train(dict(data, rejected_mask=data["rejected_mask"][:, :2]), ref=ref, **TINY_RUN)


def test_train_checks_eval_data_like_data(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match="eval_data must be a dict with the tensors .* got list"):
        dpo.train(data, ref=ref, eval_data=[data], **TINY_RUN)
    with pytest.raises(ValueError, match=r"eval_data must be a dict .* missing \['chosen_ids'"):
        dpo.train(data, ref=ref, eval_data={k: v for k, v in data.items() if k != "chosen_ids"}, **TINY_RUN)
    with pytest.raises(TypeError, match=r"eval_data\['prompt_mask'\] must be a 2-D integer torch.Tensor"):
        dpo.train(data, ref=ref, eval_data=dict(data, prompt_mask=data["prompt_mask"][0]), **TINY_RUN)


def test_train_refuses_ref_logps_that_are_not_two_finite_tensors(tiny):
    ref, _, data = tiny
    c, r = pairs.reference_logps(ref, data)
    with pytest.raises(TypeError, match="ref_logps must be two tensors"):
        dpo.train(data, ref=ref, ref_logps=(c.tolist(), r.tolist()), **TINY_RUN)
    with pytest.raises(ValueError, match="ref_logps must be finite"):
        dpo.train(data, ref=ref, ref_logps=(c, torch.full_like(r, float("nan"))), **TINY_RUN)


def test_callback_none_logs_nothing_and_scalars_of_any_kind_are_numbers(tiny):
    ref, _, data = tiny
    out = dpo.train(data, ref=ref, callback=lambda policy: None, **TINY_RUN)
    assert list(out.history.evals) == ["eval/step"]
    values = {"np32": np.float32(0.25), "np_int": np.int64(3), "np0d": np.array(1.5), "torch0d": torch.tensor(2.5),
              "int": 4, "float": 0.5}
    u = dpo.train(data, ref=ref, callback=lambda policy: values, **TINY_RUN).history.evals
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
        dpo.train(data, ref=ref, callback=lambda policy: returned, **TINY_RUN)


def test_callback_must_be_callable(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match="callback must be a function"):
        dpo.train(data, ref=ref, callback={"x": 1.0}, **TINY_RUN)


def test_ctrl_c_in_the_reference_pass_raises_training_interrupted(tiny):
    ref, _, data = tiny
    ref = copy.deepcopy(ref)

    def interrupt(module, args, kwargs):
        raise KeyboardInterrupt

    handle = ref.register_forward_pre_hook(interrupt, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            dpo.train(data, ref=ref, **TINY_RUN)
    finally:
        handle.remove()
    assert isinstance(stop.value, TrainingInterrupted) and "after 0 complete updates" in str(stop.value)
    out = stop.value.result
    assert len(out.history) == 0 and out.model is not ref and not out.model.training
    assert all(torch.equal(p, q) for p, q in zip(out.model.parameters(), ref.parameters()))  # untrained


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


# ----- reusing the reference's log-probabilities ----------------------------------------------------

def test_train_reuses_given_reference_logps(tiny):
    model, _, data = tiny
    ref = pairs.reference_logps(model, data)
    a = dpo.train(data, ref=model, beta=0.5, epochs=2, batch_size=4, seed=1).history.updates
    b = dpo.train(data, ref=model, beta=0.5, epochs=2, batch_size=4, seed=1, ref_logps=ref).history.updates
    assert a["loss"] == b["loss"] and a["rewards/margins"] == b["rewards/margins"]
    with pytest.raises(ValueError, match="ref_logps"):
        dpo.train(data, ref=model, ref_logps=(ref[0][:3], ref[1][:3]))


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
    full = dpo.train(data, ref=ref, **kw)
    assert len(snapshots) == 8
    # the same run, with Ctrl-C at the start of the third step
    calls = []
    monkeypatch.setattr(dpo, "dpo_step", sigint_on_call(original_step, 3, calls))
    with pytest.raises(TrainingInterrupted, match="after 3 complete updates") as stop:
        dpo.train(data, ref=ref, **kw)
    out = stop.value.result
    assert len(calls) == 3 and len(out.history) == 3
    assert out.history.updates["loss"] == full.history.updates["loss"][:3]
    for p, q in zip(out.model.parameters(), snapshots[2]):
        assert torch.equal(p, q)  # the weights after step 3, complete
    assert not out.model.training  # left in eval mode, as after a finished run


def test_dpo_refuses_the_reference_as_the_policy(tiny_pairs):
    ref, data = tiny_pairs
    with pytest.raises(ValueError, match="policy must not be ref itself"):
        dpo.train(data, ref=ref, policy=ref)


def test_train_refuses_a_pair_with_an_empty_chosen_response(tiny):
    ref, _, data8 = tiny
    bad = {**data8, "chosen_mask": data8["chosen_mask"].index_fill(0, torch.tensor([0]), 0)}
    with pytest.raises(ValueError, match=r"data\['chosen_mask'\] must mark at least one token .* empty chosen "
                                         r"response at pair 0"):
        dpo.train(bad, ref=ref, batch_size=4)
    bad = {**data8, "rejected_mask": data8["rejected_mask"].bool().index_fill(0, torch.tensor([5]), False)}
    with pytest.raises(ValueError, match=r"data\['rejected_mask'\] .* at pair 5"):
        pairs.check_pairs(bad)
    assert pairs.check_pairs({**data8, "chosen_mask": data8["chosen_mask"].bool()}) == 8


# ----- IPO: loss_type="ipo" (the loss at known margins, the trainer) --------------------------------

IPO_RUN = dict(beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0, loss_type="ipo")


def test_ipo_loss_at_known_margins():
    beta = 0.25                                   # target margin 1 / (2 beta) = 2
    pc = torch.tensor([-1.0, -1.0, -3.0], requires_grad=True)
    pr = torch.tensor([-1.0, -3.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, -1.0])
    losses, c, r = dpo.ipo_loss(pc, pr, ref, ref, beta)
    # margins h = 0, 2, -2: losses (0 - 2)^2 = 4, 0, (-2 - 2)^2 = 16
    torch.testing.assert_close(losses, torch.tensor([4.0, 0.0, 16.0]))
    torch.testing.assert_close(c, torch.tensor([0.0, 0.0, -0.5]))
    torch.testing.assert_close(r, torch.tensor([0.0, -0.5, 0.0]))
    losses.sum().backward()                        # d/dpc (h - 2)^2 = 2 (h - 2)
    torch.testing.assert_close(pc.grad, torch.tensor([-4.0, 0.0, -8.0]))
    assert not c.requires_grad


@pytest.mark.parametrize("beta", [0, -1, math.inf, "a"])
def test_ipo_loss_bad_beta(beta):
    z = torch.zeros(2)
    with pytest.raises((ValueError, TypeError), match="beta"):
        dpo.ipo_loss(z, z, z, z, beta)


def test_ipo_loss_bad_shapes_and_non_finite():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo.ipo_loss(z, z, z, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        dpo.ipo_loss(torch.tensor([0.0, math.nan]), z, z, z, 0.1)


def test_ipo_train_reaches_the_target_margin_and_keeps_ref_frozen(tiny):
    model, _, data = tiny
    before = [p.clone() for p in model.parameters()]
    out = dpo.train(data, ref=model, eval_data=data, **{**IPO_RUN, "epochs": 40})
    u = {**out.history.updates, **out.history.evals}
    assert u["loss"][0] == pytest.approx(1.0, abs=1e-5)            # h = 0 at the start: (0 - 1)^2
    assert u["rewards/accuracies"][0] == 0.5                        # ties count one half
    assert out.history.update_array("eval/margin")[-1] == pytest.approx(1.0, abs=0.1)
    assert u["eval/loss"][-1] < 0.02
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    again = dpo.train(data, ref=model, **IPO_RUN)
    assert again.history.updates["loss"] == u["loss"][:2]
    norm = dpo.train(data, ref=model, length_normalize=True, **IPO_RUN)
    assert norm.history.updates["loss"][0] == pytest.approx(1.0, abs=1e-5)


def test_ipo_train_callback_before_and_after_each_epoch(tiny):
    model, _, data = tiny
    seen = []
    out = dpo.train(data, ref=model, beta=0.5, epochs=3, batch_size=4, lr=1e-2, seed=0, loss_type="ipo",
                    eval_every=2, callback=lambda policy: seen.append(policy.training) or {"n": len(seen)})
    assert out.history.update_array("eval/step").tolist() == [0, 2, 4, 6]      # 8 pairs: 2 steps per epoch
    assert out.history.update_array("eval/n").tolist() == [1, 2, 3, 4] and seen == [False] * 4   # in eval mode
    assert "eval/loss" not in out.history.evals
    plain = dpo.train(data, ref=model, **{**IPO_RUN, "epochs": 3})
    assert plain.history.updates["loss"] == out.history.updates["loss"]      # the callback does not perturb training


@pytest.mark.parametrize("kwargs, name", [({"beta": 0}, "beta"), ({"epochs": 0}, "epochs"),
                                          ({"length_normalize": 1}, "length_normalize"),
                                          ({"loss_type": "dpo"}, r"loss_type must be one of \('sigmoid', 'ipo'\)")])
def test_ipo_train_bad_arguments(tiny, kwargs, name):
    model, _, data = tiny
    with pytest.raises((ValueError, TypeError), match=name):
        dpo.train(data, ref=model, **{"loss_type": "ipo", **kwargs})
    with pytest.raises(ValueError, match="data"):
        dpo.train({"prompt_ids": 1}, ref=model)


def test_ipo_train_leaves_the_callers_ref_as_found(tiny):
    _, tok, data = tiny
    ref = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0).train()   # trainable, in train mode
    ref.lm_head.eval()
    before = _flags(ref)
    out = dpo.train(data, ref=ref, eval_data=data, **IPO_RUN)
    assert _flags(ref) == before
    assert not out.model.training and out.model is not ref


def test_ipo_train_restores_ref_after_an_error(tiny, monkeypatch):
    ref, _, data = tiny
    ref = copy.deepcopy(ref).train()
    before = _flags(ref)

    def failing_loss(*args):
        raise RuntimeError("boom")

    monkeypatch.setitem(dpo.LOSS_TYPES, "ipo", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        dpo.train(data, ref=ref, **IPO_RUN)
    assert _flags(ref) == before


def test_ipo_ctrl_c_in_the_reference_pass_or_the_first_callback_raises_training_interrupted(tiny):
    ref, _, data = tiny
    ref = copy.deepcopy(ref)
    handle = ref.register_forward_pre_hook(lambda module, args: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            dpo.train(data, ref=ref, **IPO_RUN)
    finally:
        handle.remove()
    assert isinstance(stop.value, TrainingInterrupted) and len(stop.value.result.history) == 0

    def interrupting(policy):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stop:
        dpo.train(data, ref=ref, callback=interrupting, **IPO_RUN)
    assert isinstance(stop.value, TrainingInterrupted)
    assert isinstance(stop.value.result.config, dpo.DPOConfig) and not stop.value.result.model.training


def test_ipo_train_checks_eval_data_like_data(tiny):
    ref, _, data = tiny
    with pytest.raises(ValueError, match=r"eval_data must be a dict with the tensors .* missing \['prompt_ids'"):
        dpo.train(data, ref=ref, eval_data={"prompt": 1}, **IPO_RUN)
    with pytest.raises(TypeError, match=r"eval_data\['chosen_ids'\] must be a 2-D integer torch.Tensor .* got list"):
        dpo.train(data, ref=ref, eval_data=dict(data, chosen_ids=data["chosen_ids"].tolist()), **IPO_RUN)
    with pytest.raises(TypeError, match="data must be a dict with the tensors .* got tuple"):
        dpo.train(tuple(data.values()), ref=ref, **IPO_RUN)


def test_ipo_train_refuses_a_float16_ref_and_trains_a_bfloat16_one(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match=r"ref has torch.float16 parameters.*allowed: float32, float64 or bfloat16"):
        dpo.train(data, ref=copy.deepcopy(ref).half(), **IPO_RUN)
    out = dpo.train(data, ref=copy.deepcopy(ref).to(torch.bfloat16), **IPO_RUN)
    assert np.isfinite(out.history.update_array("loss")).all()


def test_ipo_callback_none_numpy_scalars_and_non_numbers(tiny):
    ref, _, data = tiny
    out = dpo.train(data, ref=ref, callback=lambda policy: None, **IPO_RUN)
    assert list(out.history.evals) == ["eval/step"]
    out = dpo.train(data, ref=ref, callback=lambda policy: {"r": np.float32(0.5), "kl": torch.tensor(0.25)},
                    eval_every=2, **IPO_RUN)                                       # before training and at step 2
    assert out.history.evals["eval/r"] == [0.5, 0.5] and out.history.evals["eval/kl"] == [0.25, 0.25]
    with pytest.raises(TypeError, match=r"callback's value for 'text' must be a real number .* got 'skipped'"):
        dpo.train(data, ref=ref, callback=lambda policy: {"text": "skipped"}, **IPO_RUN)
    with pytest.raises(ValueError, match="callback's key 'margin' clashes with the trainer's own eval/margin"):
        dpo.train(data, ref=ref, callback=lambda policy: {"margin": 1.0}, **IPO_RUN)


def test_per_token_divides_by_the_response_lengths_and_loss_types_are_trls_names(tiny):
    _, _, data = tiny
    c, r = torch.ones(8), torch.full((8,), 2.0)
    pc, pr = dpo.per_token(c, r, data)
    torch.testing.assert_close(pc, 1 / data["chosen_mask"].sum(1).float())
    torch.testing.assert_close(pr, 2 / data["rejected_mask"].sum(1).float())
    assert dpo.LOSS_TYPES == {"sigmoid": dpo.dpo_loss, "ipo": dpo.ipo_loss}
    assert dpo.DPOConfig().loss_type == "sigmoid" and dpo.DPOConfig(loss_type="ipo").loss_type == "ipo"


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

def test_train_refuses_epochs_above_max_epochs(tiny):
    ref, _, data = tiny
    with pytest.raises(ValueError, match=r"epochs must be <= MAX_EPOCHS \(1000\), got 1000000000"):
        dpo.train(data, ref=ref, batch_size=4, epochs=10**9)


@pytest.mark.parametrize("frame", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_train_inside_no_grad_or_inference_mode_gives_the_same_weights(tiny, frame, loss_type):
    ref, _, data = tiny
    expected = dpo.train(data, ref=ref, batch_size=4, loss_type=loss_type).model
    with frame():
        got = dpo.train(data, ref=ref, batch_size=4, loss_type=loss_type).model
    for a, b in zip(expected.parameters(), got.parameters()):
        assert torch.equal(a, b)


def test_train_names_ref_when_it_is_a_reward_model(tiny):
    from rlnotes.reward import RewardModel
    ref, _, data = tiny
    with pytest.raises(TypeError, match=r"ref must be a causal LM \(its forward takes input_ids"):
        dpo.train(data, ref=RewardModel(ref), batch_size=4)


def test_train_names_chosen_ids_past_the_vocabulary(tiny):
    ref, _, data = tiny
    bad = {**data, "chosen_ids": data["chosen_ids"] + 100_000}
    with pytest.raises(ValueError, match=r"data\['chosen_ids'\] must be token ids in \[0, \d+\)"):
        dpo.train(bad, ref=ref, batch_size=4)


def test_train_refuses_a_callback_that_does_not_take_one_argument(tiny):
    ref, _, data = tiny
    message = r"callback must be .*called as callback\(policy\), but its signature is \(p, s\)"
    with pytest.raises(TypeError, match=message):
        dpo.train(data, ref=ref, batch_size=4, callback=lambda p, s: None, eval_every=1)
