"""rlnotes.rloo: leave-one-out baselines, the exact bias of the group mean, and the RLOO trainer."""


import pytest
import torch

from rlnotes import rlhf, rloo
from rlnotes.trainer import TrainResult


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
def prepared():
    return rlhf.prepare(0, n_sft=512, sft_steps=40, n_pairs=16, n_test_pairs=8, rm_steps=2, n_eval_prompts=64)


def test_verifiable_reward_is_r_star(prepared):
    P = prepared
    prompts = P.eval_prompts[:4]
    responses = ["it was great .", "great great", "the story was awful .", "fun but dull ."]
    from rlnotes import lm
    p, pm = lm.encode_prompts(P.tokenizer, prompts)
    ids, mask = lm.encode_responses(P.tokenizer, responses)
    got = rloo.VerifiableReward(P.task, P.tokenizer)(p, pm, ids, mask)
    torch.testing.assert_close(got, P.task.true_rewards(prompts, responses))


def test_sample_groups_shapes_and_kl(prepared):
    P = prepared
    g = rloo.sample_groups(P.sft, P.sft, P.tokenizer, ["review of the movie :", "game review :"], 3, 8,
                           torch.Generator().manual_seed(0))
    assert g.prompts == ["review of the movie :"] * 3 + ["game review :"] * 3
    assert g.ids.shape[0] == 6 and g.logp.shape == g.ids.shape
    torch.testing.assert_close(g.logp, g.ref_logp)
    assert torch.all(g.kl.abs() < 1e-5) and (g.logp[g.mask == 0] == 0).all()


def test_train_improves_r_star_and_follows_the_contract(prepared):
    P = prepared
    before = rlhf.evaluate(P.sft, P)["r_star"]
    ref_state = [p.clone() for p in P.sft.parameters()]
    rng = torch.get_rng_state()
    out = rloo.train(P, steps=25, batch_size=8, k=4, lr=3e-3, beta=0.05, seed=0)
    assert isinstance(out, TrainResult) and out.config.k == 4 and out.value_fn is None
    assert torch.equal(torch.get_rng_state(), rng)
    after = rlhf.evaluate(out.model, P)["r_star"]
    h = out.history
    assert after > before + 0.3, (before, after)
    for key in ("loss", "reward", "reward_std", "kl/exact_per_sequence", "kl/k1_per_sequence", "entropy",
                "completions/mean_length", "completions/clipped_ratio", "r_star", "seconds"):
        assert len(h.update_array(key)) == 25
    assert h.update_array("kl/exact_per_sequence")[0] == pytest.approx(0.0, abs=1e-4)
    for p, q in zip(ref_state, P.sft.parameters()):
        assert torch.equal(p, q)
    again = rloo.train(P, steps=2, batch_size=8, k=4, lr=3e-3, beta=0.05, seed=0)
    assert again.history.updates["loss"] == h.updates["loss"][:2]


@pytest.mark.parametrize("kwargs, name", [({"k": 1}, "k"), ({"beta": -1}, "beta"), ({"lr": 0}, "lr"),
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
        rloo.train(prepared, reward, steps=5, batch_size=2, k=2, seed=0)
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
    train = (lambda **kw: rloo.train(prepared, k=4, **kw)) if trainer == "rloo" else \
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
    assert rloo.reuses_scoring_pass(prepared.sft) and not rloo.reuses_scoring_pass(prepared.sft, epochs=2)
    assert not rloo.reuses_scoring_pass(prepared.sft, one_minibatch=False)
    assert not rloo.reuses_scoring_pass(torch.nn.Sequential(torch.nn.Dropout(0.1)))


def test_sample_groups_keeps_the_graph_only_when_asked(prepared):
    P = prepared
    policy = rloo.new_policy(P.sft)
    args = (policy, P.sft, P.tokenizer, ["review of the movie :", "game review :"], 3, 8)
    kept = rloo.sample_groups(*args, torch.Generator().manual_seed(0), keep_graph=True)
    plain = rloo.sample_groups(*args, torch.Generator().manual_seed(0))
    assert plain.first_pass is None and not plain.logp.requires_grad
    assert kept.first_pass.requires_grad and not kept.logp.requires_grad
    assert torch.equal(kept.first_pass.detach(), kept.logp) and torch.equal(kept.ids, plain.ids)
    torch.testing.assert_close(kept.logp, plain.logp, rtol=0, atol=1e-6)
