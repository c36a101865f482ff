"""rlnotes.rlhf: phases 1 and 2 (SFT, preference pairs, the reward model), as ``prepare`` and as
chapter 4's visible steps (``seed_streams``, ``Prepared.differences``); phase 3, PPO on the language
model, its KL penalty and controllers; and what each refuses."""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from rlnotes import lm, models, reward, rlhf, sentiment, sft


@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


@pytest.fixture(scope="module")
def batch(prepared):
    tok = prepared.tokenizer
    p = lm.encode_prompts(tok, ["review of the movie :", "phone review :"])
    r = lm.encode_responses(tok, ["it was good .", "good ."])
    return p + r


def test_sft_loss_is_mean_nll_of_response_tokens(prepared, batch):
    logp = lm.token_logprobs(prepared.sft, *batch)
    n_tokens = 5 + 3  # response tokens, EOS included
    assert rlhf.sft_loss(prepared.sft, *batch).item() == pytest.approx(-logp.sum().item() / n_tokens, rel=1e-5)


def test_train_sft_lowers_heldout_loss(prepared):
    h = prepared.sft_heldout
    assert h["sft"] < h["untrained"] - 1.0
    assert len(prepared.sft_history.update_array("loss")) == 20
    task, tok = prepared.task, prepared.tokenizer
    xs, ys = task.sft_corpus(16, seed=5)
    model = models.tiny_gpt2(tok, seed=1)
    before = rlhf.heldout_loss(model, tok, xs, ys)
    out = rlhf.train_sft(model, tok, xs, ys, steps=15, batch_size=16, lr=3e-3, seed=0)
    assert out.model is model and isinstance(out.config, rlhf.SFTConfig)  # trained in place
    assert set(out.history.updates) == {"loss", "seconds"} and len(out.history) == 15
    assert rlhf.heldout_loss(model, tok, xs, ys) < before
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rlhf.train_sft(model, tok, xs, ys, steps=0)
    with pytest.raises(ValueError, match="equal length"):
        rlhf.train_sft(model, tok, xs, ys[:-1], steps=1)


def test_bt_probability_closed_form():
    assert rlhf.bt_probability(torch.tensor(1.0), torch.tensor(0.0)).item() == pytest.approx(math.e / (math.e + 1))
    assert rlhf.bt_probability(torch.tensor(3.0), torch.tensor(3.0)).item() == 0.5
    r1, r2 = torch.randn(10), torch.randn(10)
    assert torch.allclose(rlhf.bt_probability(r1, r2) + rlhf.bt_probability(r2, r1), torch.ones(10))
    assert torch.allclose(rlhf.bt_probability(r1, r2), r1.exp() / (r1.exp() + r2.exp()))


def test_reward_loss_at_extreme_margins():
    assert rlhf.reward_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    big = torch.tensor([1e4]), torch.tensor([-1e4])
    assert rlhf.reward_loss(*big).item() == 0.0
    assert rlhf.reward_loss(big[1], big[0]).item() == pytest.approx(2e4)  # finite, = -margin
    rc = torch.tensor([-1e4, 1e4], requires_grad=True)
    rlhf.reward_loss(rc, torch.tensor([1e4, -1e4])).backward()
    assert torch.isfinite(rc.grad).all() and rc.grad.tolist() == pytest.approx([-0.5, 0.0])
    with pytest.raises(ValueError, match="shapes must match"):
        rlhf.reward_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="at least one pair"):
        rlhf.reward_loss(torch.zeros(0), torch.zeros(0))


def test_preference_accuracy():
    # right, wrong, a tie (one half), right: (1 + 0 + 0.5 + 1) / 4
    assert rlhf.preference_accuracy(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])) == 0.625
    with pytest.raises(ValueError, match="shapes must match"):
        rlhf.preference_accuracy(torch.zeros(2), torch.zeros(3))


def test_preferences_validation():
    good = dict(prompts=["x"], chosen=["a ."], rejected=["b ."], r_chosen=[1.0], r_rejected=[0.0])
    assert len(rlhf.Preferences(**good)) == 1
    with pytest.raises(ValueError, match="empty preference data"):
        rlhf.Preferences([], [], [], [], [])
    with pytest.raises(ValueError, match="chosen must have one entry per prompt"):
        rlhf.Preferences(**{**good, "chosen": ["a .", "c ."]})
    with pytest.raises(ValueError, match="rejected must be a list of strings"):
        rlhf.Preferences(**{**good, "rejected": [3]})
    with pytest.raises(TypeError, match="prefs must be a Preferences"):
        rlhf.train_reward_model(None, None, [("x", "a", "b")], steps=1)


def test_label_preferences_follow_bradley_terry(prepared):
    task = prepared.task
    n = 4000
    prefs = rlhf.label_preferences(task, ["x"] * n, ["it was great ."] * n, ["it was quiet ."] * n, seed=0)
    frac = sum(c == "it was great ." for c in prefs.chosen) / n  # r* = 1 vs 0: p = sigma(1)
    assert frac == pytest.approx(1 / (1 + math.exp(-1)), abs=0.025)
    assert torch.all(prefs.r_chosen == torch.tensor([task.true_reward("x", c) for c in prefs.chosen]))
    with pytest.raises(ValueError, match="equal length"):
        rlhf.label_preferences(task, ["x"], [], [], seed=0)


def test_sample_pairs_and_prepared_data(prepared):
    y1, y2 = rlhf.sample_pairs(prepared.sft, prepared.tokenizer, ["phone review :"] * 5, seed=0)
    assert len(y1) == len(y2) == 5
    assert (y1, y2) == rlhf.sample_pairs(prepared.sft, prepared.tokenizer, ["phone review :"] * 5, seed=0)
    assert len(prepared.train_prefs) == 32 and len(prepared.test_prefs) == 16
    # one random stream per use, seed + rlhf.SEED_STREAMS[use]; no seed field on Prepared
    streams = rlhf.SEED_STREAMS
    assert prepared.train_prefs.prompts == prepared.task.prompts(32, streams["train_pairs"], "train")
    assert prepared.test_prefs.prompts == prepared.task.prompts(16, streams["test_pairs"], "test")
    assert prepared.eval_prompts == prepared.task.prompts(8, streams["eval_prompts"], "test")
    assert len(set(streams[k] for k in ("train_pairs", "test_pairs", "eval_prompts", "heldout_corpus"))) == 4
    assert "seed" not in {f.name for f in dataclasses.fields(rlhf.Prepared)}
    assert set(prepared.test_prefs.prompts) <= set(prepared.task.prompt_pool("test"))
    sub = prepared.train_prefs.subset([3, 1])
    assert sub.prompts == [prepared.train_prefs.prompts[3], prepared.train_prefs.prompts[1]]
    assert sub.r_chosen.tolist() == prepared.train_prefs.r_chosen[[3, 1]].tolist()
    assert prepared.device == torch.device("cpu")
    enc = prepared.train_prefs.encode(prepared.tokenizer)
    assert enc["chosen_ids"].shape == enc["chosen_mask"].shape and enc["prompt_ids"].shape[0] == 32


def test_reward_model_shape_and_normalisation(prepared, batch):
    rm = prepared.reward_model
    assert rm(*batch).shape == (2,)
    assert not any(p.requires_grad for p in rm.parameters())
    prefs = prepared.train_prefs
    scores = rm.score(prepared.tokenizer, prefs.prompts * 2, prefs.chosen + prefs.rejected)
    assert abs(scores.mean().item()) < 1e-4  # E[r_phi] = 0 on pi^SFT's samples
    fresh = rlhf.RewardModel(prepared.sft)
    assert all(p.requires_grad for p in fresh.parameters())
    fresh.normalize_(prepared.tokenizer, ["x :"] * 2, ["good .", "bad ."])
    assert abs(fresh.score(prepared.tokenizer, ["x :"] * 2, ["good .", "bad ."]).mean().item()) < 1e-5
    assert len(prepared.rm_history.update_array("loss")) == 5
    assert set(prepared.rm_history.updates) == {"loss", "accuracy", "seconds"}


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


def test_policy_with_value_and_ppo_token_loss(prepared, batch):
    policy = rlhf.PolicyWithValue(prepared.sft)
    logits, logp, values = policy(*batch)
    assert torch.allclose(logp, lm.token_logprobs(prepared.sft, *batch))
    assert values.shape == logp.shape and torch.all(values == 0)
    adv, mask = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[1, 1, 0]])
    old = torch.zeros(1, 3)
    assert rlhf.ppo_token_loss(old, old, adv, mask, 0.2).item() == pytest.approx(0.5)  # -mean(A) on mask
    new = torch.log(torch.tensor([[2.0, 2.0, 2.0]]))  # rho = 2: clipped to 1.2 for A > 0, kept for A < 0
    assert rlhf.ppo_token_loss(new, old, adv, mask, 0.2).item() == pytest.approx(-(1.2 * 1 - 2 * 2) / 2)


def test_train_ppo_evaluate_and_kl_to_ref(prepared):
    out = rlhf.train_ppo(prepared, beta=0.1, steps=2, batch_size=8, epochs=1, seed=0)
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
    ev = rlhf.evaluate(policy, prepared, n_repeats=1, seed=0)
    means = ("r_star", "r_phi", "kl/exact_per_sequence")
    assert set(ev) == {*means, *(k + "/se" for k in means), "n", "distinct_1", "distinct_2", "samples"}
    assert ev["kl/exact_per_sequence"] > 0 and len(ev["samples"]) == 8 and ev["n"] == 8
    r = prepared.task.true_rewards(prepared.eval_prompts, ev["samples"]).double()
    assert ev["r_star"] == pytest.approx(r.mean().item()) and ev["r_star/se"] == pytest.approx(r.std().item() / 8 ** 0.5)
    assert rlhf.evaluate(policy, prepared, n_repeats=3, seed=0)["n"] == 24
    assert ev == rlhf.evaluate(policy, prepared, n_repeats=1, seed=0)
    assert ev == rlhf.evaluate(out.value_fn, prepared, n_repeats=1, seed=0)  # the LM or the LM with its value head
    assert rlhf.evaluate(prepared.sft, prepared, n_repeats=1)["kl/exact_per_sequence"] == pytest.approx(0.0, abs=1e-6)
    p = lm.encode_prompts(prepared.tokenizer, ["phone review :"])
    r = lm.encode_responses(prepared.tokenizer, ["good ."])
    assert rlhf.kl_to_ref(prepared.sft, prepared.sft, *p, *r).item() == pytest.approx(0.0, abs=1e-6)
    adaptive = rlhf.train_ppo(prepared, beta=0.1, steps=2, batch_size=8, epochs=1, kl_target=1.0).history
    assert adaptive.update_array("beta")[0] == 0.1 and adaptive.update_array("beta")[1] != 0.1
    with pytest.raises(ValueError, match="eps must be > 0"):
        rlhf.train_ppo(prepared, eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        rlhf.train_ppo(prepared, eps=math.inf)
    with pytest.raises(ValueError, match="minibatch_size must be <="):
        rlhf.train_ppo(prepared, batch_size=2, minibatch_size=4)


def test_scale_up_path_from_a_saved_folder(tmp_path, prepared):
    models.save_pretrained(models.tiny_gpt2(prepared.tokenizer, seed=3), prepared.tokenizer, tmp_path / "lm")
    model, tok = models.load_causal_lm(tmp_path / "lm", device="cpu")
    small = rlhf.prepare(1, n_sft=32, sft_steps=3, n_pairs=8, n_test_pairs=4, rm_steps=2, n_eval_prompts=4,
                         model=model, tokenizer=tok)
    assert small.sft is model and len(small.test_prefs) == 4
    with pytest.raises(ValueError, match="both model and tokenizer"):
        rlhf.prepare(0, model=model)


def test_compare_kl_estimators(prepared):
    same = rlhf.compare_kl_estimators(prepared.sft, prepared, n_prompts=4, n_draws=8)
    assert same["exact"] == pytest.approx(0.0, abs=1e-6) and same["k1"]["std"] == pytest.approx(0.0, abs=1e-6)
    other = rlhf.PolicyWithValue(models.tiny_gpt2(prepared.tokenizer, seed=5))
    res = rlhf.compare_kl_estimators(other, prepared, n_prompts=8, n_draws=2000)
    assert res["exact"] > 0.1
    assert abs(res["k1"]["bias"]) < 0.1 * res["exact"] and abs(res["k3"]["bias"]) < 0.1 * res["exact"]
    assert res["k2"]["negative"] == 0 and res["k3"]["negative"] == 0 and res["k1"]["negative"] > 0


def test_update_reuses_collects_forward_pass(prepared, monkeypatch):
    """One minibatch per epoch: collect's forward pass serves epoch 0 (one policy forward fewer per
    step) and training follows the same path as recomputing it; with minibatches it is recomputed."""
    calls = []
    forward = rlhf.PolicyWithValue.forward
    monkeypatch.setattr(rlhf.PolicyWithValue, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    kw = dict(beta=0.1, steps=2, batch_size=8, epochs=2, seed=0)
    reused = rlhf.train_ppo(prepared, **kw)
    assert len(calls) == 2 * 2  # per step: collect's pass (kept for epoch 0), epoch 1's pass
    calls.clear()
    monkeypatch.setattr(rlhf, "reuses_scoring_pass", lambda *a, **kw: False)
    recomputed = rlhf.train_ppo(prepared, **kw)
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

TINY = dict(n_sft=64, sft_steps=3, n_pairs=32, n_test_pairs=16, rm_steps=3, n_eval_prompts=8)


def test_train_ppo_and_measurements_refuse_what_is_not_a_prepared(tiny_prepared):
    with pytest.raises(TypeError, match=r"prepared must be a Prepared \(from rlhf.prepare\), got NoneType"):
        rlhf.train_ppo(None)
    with pytest.raises(TypeError, match="prepared must be a Prepared .* got NoneType"):
        rlhf.evaluate(tiny_prepared.sft, None)
    with pytest.raises(TypeError, match="policy must be a causal LM or a PolicyWithValue .* got NoneType"):
        rlhf.evaluate(None, tiny_prepared)
    with pytest.raises(ValueError, match="prepared is a partial Prepared .*sft_history, rm_history are None"):
        rlhf.train_ppo(dataclasses.replace(tiny_prepared, sft_history=None, rm_history=None))


@pytest.mark.parametrize("scores, error, match", [
    (lambda n: torch.full((n,), float("nan")), ValueError,
     r"must return finite numbers; got NaN or inf for responses \[0, 1\]"),
    (lambda n: torch.zeros(2 * n), ValueError, r"must return one number per response \(2\).*got 4 values"),
    (lambda n: None, TypeError, r"must return one number per response \(2\).*got NoneType")])
def test_train_ppo_checks_the_reward_models_scores(tiny_prepared, scores, error, match):
    bad = dataclasses.replace(tiny_prepared, reward_model=lambda p, pm, ids, mask: scores(len(p)))
    with pytest.raises(error, match="prepared.reward_model " + match):
        rlhf.train_ppo(bad, steps=1, batch_size=2, epochs=1)


def test_evaluate_checks_the_reward_models_scores(tiny_prepared):
    twice = dataclasses.replace(tiny_prepared, reward_model=lambda p, pm, ids, mask: torch.zeros(2 * len(p)))
    with pytest.raises(ValueError, match=r"prepared.reward_model must return one number per response \(8\).*16 values"):
        rlhf.evaluate(tiny_prepared.sft, twice)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        rlhf.evaluate(tiny_prepared.sft, tiny_prepared, seed=-1)


def test_compare_kl_estimators_refuses_more_prompts_than_there_are(tiny_prepared):
    with pytest.raises(ValueError, match=r"n_prompts must be <= len\(prepared.eval_prompts\) \(8\), got 64"):
        rlhf.compare_kl_estimators(tiny_prepared.sft, tiny_prepared, n_prompts=64)
    assert rlhf.compare_kl_estimators(tiny_prepared.sft, tiny_prepared, n_prompts=8, n_draws=2)["exact"] == \
        pytest.approx(0.0, abs=1e-6)   # all of them is fine


def test_token_rewards_and_ppo_token_loss_bad_input():
    logp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"r_phi must be finite \(it holds NaN or inf\)"):
        rlhf.token_rewards(torch.tensor([1.0, float("nan")]), logp, logp, mask, beta=0.1)
    with pytest.raises(TypeError, match="r_phi must be a tensor"):
        rlhf.token_rewards([1.0, 2.0], logp, logp, mask, beta=0.1)
    with pytest.raises(ValueError, match="mask must mark at least one response token, got none"):
        rlhf.ppo_token_loss(logp, logp, logp, torch.zeros(2, 3), 0.2)


def test_prepare_refuses_a_model_that_is_not_a_module(tiny_prepared):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .* got str"):
        rlhf.prepare(0, model="gpt2", tokenizer=tiny_prepared.tokenizer, **TINY)


def _interrupt_on_call(n):
    calls = []

    def wrap(fn):
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return fn(*args, **kwargs)
        return wrapped
    return wrap


def _interrupted_prepare():
    from rlnotes.trainer import TrainingInterrupted

    with pytest.raises(KeyboardInterrupt) as caught:
        rlhf.prepare(0, **TINY)
    assert isinstance(caught.value, TrainingInterrupted) and isinstance(caught.value.result, rlhf.Prepared)
    return caught.value


def test_prepare_interrupted_at_once_gives_an_empty_prepared(monkeypatch):
    monkeypatch.setattr(sentiment, "SentimentTask", _interrupt_on_call(1)(sentiment.SentimentTask))
    stop = _interrupted_prepare()
    assert stop.phase == "the task and tokenizer"
    assert all(getattr(stop.result, f.name) is None for f in dataclasses.fields(rlhf.Prepared)
               if f.name != "sft_heldout")


def test_prepare_interrupted_in_sft_gives_a_prepared_with_the_partial_sft(monkeypatch):
    import rlnotes.sft

    monkeypatch.setattr(rlnotes.sft, "sft_loss", _interrupt_on_call(2)(rlnotes.sft.sft_loss))
    stop = _interrupted_prepare()
    P = stop.result
    assert stop.phase == "SFT" and isinstance(P.task, sentiment.SentimentTask) and P.tokenizer is not None
    assert isinstance(P.sft, torch.nn.Module) and len(P.sft_history) == 1 and "untrained" in P.sft_heldout
    assert P.reward_model is None and P.train_prefs is None and P.rm_history is None and P.eval_prompts is None
    with pytest.raises(ValueError, match="prepared is a partial Prepared"):
        rlhf.train_ppo(P)


def test_prepare_interrupted_in_the_preference_data_or_the_reward_model(monkeypatch):
    import rlnotes.reward

    with monkeypatch.context() as m:
        m.setattr(rlhf, "sample_pairs", _interrupt_on_call(2)(rlhf.sample_pairs))
        stop = _interrupted_prepare()
    assert stop.phase == "the preference data" and len(stop.result.sft_history) == 3
    assert len(stop.result.train_prefs) == 32 and stop.result.test_prefs is None and stop.result.reward_model is None
    monkeypatch.setattr(rlnotes.reward, "reward_loss", _interrupt_on_call(2)(rlnotes.reward.reward_loss))
    stop = _interrupted_prepare()
    P = stop.result
    assert stop.phase == "the reward model" and isinstance(P.reward_model, rlhf.RewardModel)
    assert len(P.rm_history) == 1 and len(P.test_prefs) == 16 and P.eval_prompts is None


def test_train_ppo_interrupted_before_the_policy_exists(tiny_prepared, monkeypatch):
    from rlnotes.trainer import TrainingInterrupted

    monkeypatch.setattr(rlhf, "PolicyWithValue", _interrupt_on_call(1)(rlhf.PolicyWithValue))
    with pytest.raises(KeyboardInterrupt) as caught:
        rlhf.train_ppo(tiny_prepared, steps=2, batch_size=2, epochs=1)
    assert isinstance(caught.value, TrainingInterrupted)
    assert caught.value.result.model is None and caught.value.result.value_fn is None
    assert len(caught.value.result.history) == 0 and caught.value.result.config.steps == 2



def test_seed_streams_leave_room_for_their_offsets():
    top = max(rlhf.SEED_STREAMS.values())
    assert max(rlhf.seed_streams(2**63 - 1 - top).values()) == 2**63 - 1
    with pytest.raises(ValueError, match=rf"seed must be below 2\*\*63 - {top}"):
        rlhf.seed_streams(2**63 - top)


def test_train_ppo_refuses_a_zero_max_grad_norm_and_a_negative_vf_coef_by_name(tiny_prepared):
    with pytest.raises(ValueError, match="max_grad_norm must be > 0, got 0.0"):
        rlhf.train_ppo(tiny_prepared, max_grad_norm=0)
    with pytest.raises(ValueError, match=r"vf_coef must be in \[0.0, inf\], got -1.0"):
        rlhf.train_ppo(tiny_prepared, vf_coef=-1)


def test_train_ppo_eps_is_any_positive_finite_number(tiny_prepared):
    with pytest.raises(ValueError, match="eps must be > 0"):
        rlhf.train_ppo(tiny_prepared, eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        rlhf.train_ppo(tiny_prepared, eps=math.inf)
    out = rlhf.train_ppo(tiny_prepared, eps=1.5, steps=1, batch_size=2, epochs=1)  # (0, inf): 1.5 is fine
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


# ------------------------------------------------------------- phases 1 and 2 step by step (chapter 4)
# The steps, run one by one with ``seed_streams``, give exactly what ``rlhf.prepare`` returns;
# ``Prepared.differences`` finds any field that differs.

SIZES = dict(n_sft=96, sft_steps=6, n_pairs=24, n_test_pairs=12, rm_steps=4, n_eval_prompts=8)


def step_by_step(seed):
    """Chapter 4's cells, at toy sizes."""
    s = rlhf.seed_streams(seed)
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    model = models.tiny_gpt2(tok, seed=s["init"])
    xs, ys = task.sft_corpus(SIZES["n_sft"], s["sft_corpus"])
    hx, hy = task.sft_corpus(500, s["heldout_corpus"], split="test")
    untrained = sft.heldout_loss(model, tok, hx, hy)
    sft_run = sft.train_sft(model, tok, xs, ys, steps=SIZES["sft_steps"], seed=s["sft"])
    pi_sft = sft_run.model.requires_grad_(False)
    heldout = {"untrained": untrained, "sft": sft.heldout_loss(pi_sft, tok, hx, hy)}
    train = rlhf.preference_data(task, pi_sft, tok, "train", SIZES["n_pairs"], seed=s["train_pairs"])
    test = rlhf.preference_data(task, pi_sft, tok, "test", SIZES["n_test_pairs"], seed=s["test_pairs"])
    rm_run = reward.train_reward_model(pi_sft, tok, train, steps=SIZES["rm_steps"], seed=s["reward_model"])
    return rlhf.Prepared(task, tok, pi_sft, rm_run.model, train, test,
                         task.prompts(SIZES["n_eval_prompts"], s["eval_prompts"], "test"),
                         sft_run.history, rm_run.history, heldout)


@pytest.fixture(scope="module")
def shortcut():
    return rlhf.prepare(3, **SIZES)


def test_steps_one_by_one_give_what_prepare_returns(shortcut):
    steps = step_by_step(3)
    assert steps.differences(shortcut) == []
    assert shortcut.differences(steps) == []
    rc = steps.reward_model.score(steps.tokenizer, steps.test_prefs.prompts, steps.test_prefs.chosen)
    assert torch.equal(rc, shortcut.reward_model.score(shortcut.tokenizer, shortcut.test_prefs.prompts,
                                                       shortcut.test_prefs.chosen))


def test_differences_names_each_field_that_differs(shortcut):
    other = copy.copy(shortcut)
    other.sft = copy.deepcopy(shortcut.sft)
    with torch.no_grad():
        next(other.sft.parameters()).view(-1)[0] += 1e-6   # one float, a little
    assert other.differences(shortcut) == ["sft"]
    other = copy.copy(shortcut)
    other.reward_model = copy.deepcopy(shortcut.reward_model)
    other.reward_model.offset += 1.0                          # a buffer counts too
    other.train_prefs = shortcut.train_prefs.subset(list(range(len(shortcut.train_prefs)))[::-1])
    other.eval_prompts = shortcut.eval_prompts[:-1]
    assert other.differences(shortcut) == ["reward_model", "train_prefs", "eval_prompts"]
    other = copy.copy(shortcut)
    other.sft_heldout = {**shortcut.sft_heldout, "sft": shortcut.sft_heldout["sft"] + 1e-9}
    assert other.differences(shortcut) == ["sft_heldout"]
    assert rlhf.prepare(4, **SIZES).differences(shortcut) != []   # another seed: another prepare
    with pytest.raises(TypeError, match="other must be a Prepared"):
        shortcut.differences("P")


def test_seed_streams_offsets_and_range():
    s = rlhf.seed_streams(10)
    assert s == {name: 10 + offset for name, offset in rlhf.SEED_STREAMS.items()}
    assert len(set(s.values())) > 1   # not one seed for every use
    with pytest.raises(ValueError, match="seed"):
        rlhf.seed_streams(-1)


def test_preference_data_pairs_two_samples_and_labels_them(shortcut):
    task, tok, pi = shortcut.task, shortcut.tokenizer, shortcut.sft
    d = rlhf.preference_data(task, pi, tok, "test", 16, seed=5)
    assert len(d) == 16 and d.prompts == task.prompts(16, 5, "test")
    y1, y2 = reward.sample_pairs(pi, tok, d.prompts, seed=5, max_new_tokens=task.max_response_tokens)
    assert all({c, r} == {a, b} for c, r, a, b in zip(d.chosen, d.rejected, y1, y2))   # each pair is (y1, y2), ordered
    assert torch.equal(d.r_chosen, task.true_rewards(d.prompts, d.chosen))           # r* of the chosen text
    again = rlhf.preference_data(task, pi, tok, "test", 16, seed=5)
    assert again.chosen == d.chosen and again.rejected == d.rejected
    with pytest.raises(ValueError, match="n must be"):
        rlhf.preference_data(task, pi, tok, "test", 0, seed=5)


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


def test_check_rewards_refuses_what_overflows_the_dtype():  # fix27 item 19
    with pytest.raises(ValueError, match=r"reward_fn must return numbers that fit float32 .*too large for float32"):
        rlhf.check_rewards("reward_fn", np.array([1e39, 1.0]), 2, dtype=torch.float32)
    assert rlhf.check_rewards("reward_fn", np.array([1e38, 1.0]), 2, dtype=torch.float32).dtype == torch.float32
    assert rlhf.check_rewards("reward_fn", np.array([1e39, 1.0]), 2).dtype == torch.float64


def test_evaluate_runs_in_eval_mode_and_hands_the_model_back(tiny_prepared):  # fix27 item 20
    model = copy.deepcopy(tiny_prepared.sft)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    prompts = tiny_prepared.eval_prompts[:4]
    expected = rlhf.evaluate(model.eval(), tiny_prepared, prompts, seed=3)
    model.train()
    before = torch.get_rng_state()
    assert rlhf.evaluate(model, tiny_prepared, prompts, seed=3) == expected  # sampled in eval mode
    assert torch.equal(torch.get_rng_state(), before)                        # no dropout drew from it
    assert model.training and all(m.training for m in model.modules())      # handed back as found
