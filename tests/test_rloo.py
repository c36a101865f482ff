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
