"""rlnotes.ipo: the IPO loss at known margins, its bounded optimum against DPO's, the trainer."""

import math

import pytest
import torch

from rlnotes import ipo


def test_ipo_loss_at_known_margins():
    beta = 0.25                                   # target margin 1 / (2 beta) = 2
    pc = torch.tensor([-1.0, -1.0, -3.0], requires_grad=True)
    pr = torch.tensor([-1.0, -3.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, -1.0])
    losses, c, r = ipo.ipo_loss(pc, pr, ref, ref, beta)
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
        ipo.ipo_loss(z, z, z, z, beta)


def test_ipo_loss_bad_shapes_and_non_finite():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        ipo.ipo_loss(z, z, z, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        ipo.ipo_loss(torch.tensor([0.0, math.nan]), z, z, z, 0.1)


def test_fit_bandit_ipo_stops_at_target_dpo_does_not():
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1])
    beta = 0.5
    h_ipo = ipo.fit_bandit("ipo", ref, [0, 0, 0], [1, 2, 3], beta, steps=1500)
    h_dpo = ipo.fit_bandit("dpo", ref, [0, 0, 0], [1, 2, 3], beta, steps=1500)
    assert h_ipo.update_array("margin")[-1] == pytest.approx(1 / (2 * beta), abs=1e-3)
    m = h_dpo.update_array("margin")
    assert m[-1] > 5 / (2 * beta) and m[-1] > m[-5] + 0.1       # still growing
    assert h_dpo.update_array("kl/exact_per_state")[-1] > 2 * h_ipo.update_array("kl/exact_per_state")[-1]
    with pytest.raises(ValueError, match="loss"):
        ipo.fit_bandit("kto", ref, [0], [1], beta)


def test_train_reaches_the_target_margin_and_keeps_ref_frozen(tiny):
    model, _, data = tiny
    before = [p.clone() for p in model.parameters()]
    out = ipo.train(model, data, eval_data=data, beta=0.5, epochs=40, batch_size=4, lr=1e-2, seed=0)
    u = out.history.updates
    assert u["loss"][0] == pytest.approx(1.0, abs=1e-5)            # h = 0 at the start: (0 - 1)^2
    assert u["rewards/accuracies"][0] == 0.5                        # ties count one half
    assert out.history.update_array("eval/margin")[-1] == pytest.approx(1.0, abs=0.1)
    assert u["eval/loss"][-1] < 0.02
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    again = ipo.train(model, data, beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0)
    assert again.history.updates["loss"] == u["loss"][:2]
    norm = ipo.train(model, data, beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0, length_normalize=True)
    assert norm.history.updates["loss"][0] == pytest.approx(1.0, abs=1e-5)


def test_train_callback_before_and_after_each_epoch(tiny):
    model, _, data = tiny
    seen = []
    out = ipo.train(model, data, beta=0.5, epochs=3, batch_size=4, lr=1e-2, seed=0,
                    callback=lambda policy: seen.append(policy.training) or {"n": len(seen)})
    assert out.history.update_array("eval/epoch").tolist() == [0, 1, 2, 3]
    assert out.history.update_array("eval/n").tolist() == [1, 2, 3, 4] and seen == [False] * 4   # in eval mode
    assert "eval/loss" not in out.history.updates
    plain = ipo.train(model, data, beta=0.5, epochs=3, batch_size=4, lr=1e-2, seed=0)
    assert plain.history.updates["loss"] == out.history.updates["loss"]      # the callback does not perturb training


@pytest.mark.parametrize("kwargs, name", [({"beta": 0}, "beta"), ({"epochs": 0}, "epochs"),
                                          ({"length_normalize": 1}, "length_normalize")])
def test_train_bad_arguments(tiny, kwargs, name):
    model, _, data = tiny
    with pytest.raises((ValueError, TypeError), match=name):
        ipo.train(model, data, **kwargs)
    with pytest.raises(ValueError, match="data"):
        ipo.train(model, {"prompt_ids": 1})


# ----- the caller's reference, eval_data, callbacks, interrupts, the bandit's KL --------------------

import copy  # noqa: E402

import numpy as np  # noqa: E402

from rlnotes import models  # noqa: E402
from rlnotes.trainer import TrainingInterrupted  # noqa: E402

RUN = dict(beta=0.5, epochs=1, batch_size=4, lr=1e-2, seed=0)


def _flags(model):
    return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]


def test_train_leaves_the_callers_ref_as_found(tiny):
    _, tok, data = tiny
    ref = models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=0).train()   # trainable, in train mode
    ref.lm_head.eval()
    before = _flags(ref)
    out = ipo.train(ref, data, eval_data=data, **RUN)
    assert _flags(ref) == before
    assert not out.model.training and out.model is not ref


def test_train_restores_ref_after_an_error(tiny, monkeypatch):
    ref, _, data = tiny
    ref = copy.deepcopy(ref).train()
    before = _flags(ref)

    def failing_loss(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(ipo, "ipo_loss", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        ipo.train(ref, data, **RUN)
    assert _flags(ref) == before


def test_ctrl_c_in_the_reference_pass_or_the_first_callback_raises_training_interrupted(tiny):
    ref, _, data = tiny
    ref = copy.deepcopy(ref)
    handle = ref.register_forward_pre_hook(lambda module, args: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            ipo.train(ref, data, **RUN)
    finally:
        handle.remove()
    assert isinstance(stop.value, TrainingInterrupted) and len(stop.value.result.history) == 0

    def interrupting(policy):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as stop:
        ipo.train(ref, data, callback=interrupting, **RUN)
    assert isinstance(stop.value, TrainingInterrupted)
    assert isinstance(stop.value.result.config, ipo.IPOConfig) and not stop.value.result.model.training


def test_train_checks_eval_data_like_data(tiny):
    ref, _, data = tiny
    with pytest.raises(ValueError, match=r"eval_data must be a dict with the tensors .* missing \['prompt_ids'"):
        ipo.train(ref, data, eval_data={"prompt": 1}, **RUN)
    with pytest.raises(TypeError, match=r"eval_data\['chosen_ids'\] must be a 2-D integer torch.Tensor .* got list"):
        ipo.train(ref, data, eval_data=dict(data, chosen_ids=data["chosen_ids"].tolist()), **RUN)
    with pytest.raises(TypeError, match="data must be a dict with the tensors .* got tuple"):
        ipo.train(ref, tuple(data.values()), **RUN)


def test_train_refuses_a_float16_ref_and_trains_a_bfloat16_one(tiny):
    ref, _, data = tiny
    with pytest.raises(TypeError, match=r"ref has torch.float16 parameters.*allowed: float32, float64 or bfloat16"):
        ipo.train(copy.deepcopy(ref).half(), data, **RUN)
    out = ipo.train(copy.deepcopy(ref).to(torch.bfloat16), data, **RUN)
    assert np.isfinite(out.history.update_array("loss")).all()


def test_callback_none_numpy_scalars_and_non_numbers(tiny):
    ref, _, data = tiny
    out = ipo.train(ref, data, callback=lambda policy: None, **RUN)
    assert [k for k in out.history.updates if k.startswith("eval/")] == ["eval/epoch"]
    out = ipo.train(ref, data, callback=lambda policy: {"r": np.float32(0.5), "kl": torch.tensor(0.25)}, **RUN)
    assert out.history.updates["eval/r"] == [0.5, 0.5] and out.history.updates["eval/kl"] == [0.25, 0.25]
    with pytest.raises(TypeError, match=r"callback's value for 'text' must be a real number .* got 'skipped'"):
        ipo.train(ref, data, callback=lambda policy: {"text": "skipped"}, **RUN)
    with pytest.raises(ValueError, match="callback's key 'margin' clashes with the trainer's own eval/margin"):
        ipo.train(ref, data, callback=lambda policy: {"margin": 1.0}, **RUN)


@pytest.mark.parametrize("loss", ["ipo", "dpo"])
def test_fit_bandit_kl_is_never_negative(loss):
    # pi stays at pi_ref when each pair comes both ways; float32 [0.4, 0.3, 0.2, 0.1] sums to 1 + 2.2e-8
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1])
    h = ipo.fit_bandit(loss, ref, [0, 1], [1, 0], 0.5, steps=200, log_every=10)
    kl = h.update_array("kl/exact_per_state")
    assert (kl >= 0).all() and kl.max() < 1e-12
    g = np.random.default_rng(0)
    for _ in range(10):
        probs = g.dirichlet(np.ones(5))
        h = ipo.fit_bandit(loss, probs, g.integers(0, 5, 3), g.integers(0, 5, 3), 0.5, steps=100, log_every=5)
        assert (h.update_array("kl/exact_per_state") >= 0).all()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ref_probs=[0.5, 0.6]), ValueError,
     r"ref_probs must be a distribution .* \(summing to 1 within 1e-06\), got \[0.5 0.6\]"),
    (dict(ref_probs=[0.5, float("nan")]), ValueError, "ref_probs must be a distribution"),
    (dict(winners=[0, 2]), ValueError, r"winners and losers must be tokens in \[0, 1\]"),
    (dict(winners=[True, False]), ValueError, "winners and losers must be non-empty 1-D integer arrays"),
    (dict(winners=[], losers=[]), ValueError, "winners and losers must be non-empty"),
])
def test_fit_bandit_refuses_bad_probabilities_and_tokens(kwargs, error, match):
    args = dict(ref_probs=[0.5, 0.5], winners=[0, 1], losers=[1, 0], beta=0.5, steps=3)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ipo.fit_bandit("ipo", args.pop("ref_probs"), args.pop("winners"), args.pop("losers"), args.pop("beta"), **args)
