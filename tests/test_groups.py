"""rlnotes.groups: the groups of samples RLOO and GRPO share, the one rule for reusing the scoring pass
(checked against the rule chapter 4's ``rlhf.collect`` had of its own), and the prompts' seed of a step."""

import pytest
import torch

from rlnotes import groups, grpo, models, rlhf, rloo
from rlnotes.trainer import trainable_copy


def test_step_seed_is_the_seed_every_online_trainer_drew_its_prompts_with():
    for seed in (0, 1, 7, 2 ** 40):
        for step in (0, 1, 29, 10 ** 6):
            assert groups.step_seed(seed, step) == seed * 100_003 + step
    assert groups.step_seed(2 ** 62, 5) > 2 ** 63          # Python ints: no overflow (sentiment.SentimentTask.prompts takes it)
    assert len({groups.step_seed(s, t) for s in range(4) for t in range(100)}) == 400


def test_relative_advantages_by_hand():
    r = torch.tensor([[1.0, 3.0], [0.1, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(groups.relative_advantages(r, False, 1e-4)[0], torch.tensor([-1.0, 1.0]).double())
    torch.testing.assert_close(groups.relative_advantages(r, True, 1e-4)[0],
                               torch.tensor([-1.0, 1.0]).double() / (2 ** 0.5 + 1e-4))
    assert torch.equal(groups.relative_advantages(r, True, 1e-4)[1], torch.zeros(2).double())  # equal: exactly 0


def test_check_groups_shapes_and_types():
    assert groups.check_groups("rewards", [[1, 2]]).dtype == torch.float32     # a list, converted once
    assert groups.check_groups("rewards", torch.tensor([[1, 2]])).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match=r"rewards must be \[B, k\] with k >= 2 .* shape \(3, 1\)"):
        groups.check_groups("rewards", torch.zeros(3, 1))
    with pytest.raises(TypeError, match="rewards must hold real numbers, got torch.bool"):
        groups.check_groups("rewards", torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match=r"rewards must be finite"):
        groups.check_groups("rewards", [[0.0, float("nan")]])


def test_check_reward_fn():
    assert groups.check_reward_fn(None) is None and groups.check_reward_fn(max) is max  # no signature to read
    with pytest.raises(TypeError, match="reward_fn must be a function .* got int 3"):
        groups.check_reward_fn(3)


def test_sample_groups_shapes_and_kl(tiny_prepared):
    P = tiny_prepared
    g = groups.sample_groups(P.sft, P.sft, P.tokenizer, ["review of the movie :", "game review :"], 3, 8,
                             torch.Generator().manual_seed(0))
    assert g.prompts == ["review of the movie :"] * 3 + ["game review :"] * 3
    assert g.ids.shape[0] == 6 and g.logp.shape == g.ids.shape
    torch.testing.assert_close(g.logp, g.ref_logp)
    assert torch.all(g.kl.abs() < 1e-5) and (g.logp[g.mask == 0] == 0).all()


def test_sample_groups_keeps_the_graph_only_when_asked(tiny_prepared):
    P = tiny_prepared
    policy = trainable_copy(P.sft)
    args = (policy, P.sft, P.tokenizer, ["review of the movie :", "game review :"], 3, 8)
    kept = groups.sample_groups(*args, torch.Generator().manual_seed(0), keep_graph=True)
    plain = groups.sample_groups(*args, torch.Generator().manual_seed(0))
    assert plain.first_pass is None and not plain.logp.requires_grad
    assert kept.first_pass.requires_grad and not kept.logp.requires_grad
    assert torch.equal(kept.first_pass.detach(), kept.logp) and torch.equal(kept.ids, plain.ids)
    torch.testing.assert_close(kept.logp, plain.logp, rtol=0, atol=1e-6)


def test_sample_groups_bad_arguments(tiny_prepared):
    P, prompts = tiny_prepared, tiny_prepared.eval_prompts[:2]
    with pytest.raises(TypeError, match="k must be an integer, got 1.5"):
        groups.sample_groups(P.sft, P.sft, P.tokenizer, prompts, 1.5, 4)
    g = groups.sample_groups(P.sft, P.sft, P.tokenizer, prompts, 2.0, 4, torch.Generator().manual_seed(0))
    assert g.k == 2 and len(g.text) == 4       # a whole float is accepted as the int


def test_score_groups_and_group_metrics(tiny_prepared):
    P = tiny_prepared
    g = groups.sample_groups(P.sft, P.sft, P.tokenizer, P.eval_prompts[:2], 3, 4, torch.Generator().manual_seed(0))
    reward, r_star = groups.score_groups(P.task, None, g)
    assert torch.equal(r_star, P.task.true_rewards(g.prompts, g.text)) and torch.equal(reward, r_star.to(g.logp))
    half, _ = groups.score_groups(P.task, lambda xs, ys: [0.5] * len(ys), g)
    assert half.tolist() == [0.5] * 6 and half.dtype == g.logp.dtype
    m = groups.group_metrics(g, half, r_star, 3)
    assert float(m["reward_std"]) == 0.0 and float(m["frac_reward_zero_std"]) == 1.0
    assert float(m["r_star"]) == pytest.approx(float(r_star.mean()))


def test_reuses_scoring_pass(tiny_prepared):
    sft = tiny_prepared.sft
    assert groups.reuses_scoring_pass(sft) and not groups.reuses_scoring_pass(sft, epochs=2)
    assert not groups.reuses_scoring_pass(sft, one_minibatch=False)
    assert not groups.reuses_scoring_pass(torch.nn.Sequential(torch.nn.Dropout(0.1)))
    assert groups.reuses_scoring_pass(torch.nn.Sequential(torch.nn.Dropout(0.0)))


def _old_rlhf_rule(policy, cfg):
    """The old rule of rlhf (its private ``reuses_first_pass``) as it was before ``groups.reuses_scoring_pass`` replaced it, verbatim."""
    one_minibatch = cfg.minibatch_size is None or cfg.minibatch_size >= cfg.batch_size
    return one_minibatch and not models.active_dropout(policy)


class _Decided(Exception):
    pass


def test_rlhf_collect_decides_as_its_old_rule_did_for_every_config(tiny_prepared, monkeypatch):
    """``rlhf.collect`` now asks ``groups.reuses_scoring_pass``; for every (batch_size, minibatch_size,
    epochs) an RLHFConfig allows here, with and without active dropout, it decides as the old rule did."""
    P = tiny_prepared
    plain = rlhf.PolicyWithValue(P.sft)
    dropped = rlhf.PolicyWithValue(P.sft)
    dropped.dropout = torch.nn.Dropout(0.1)         # active dropout somewhere in the policy
    decided = []

    def spy(*args, **kwargs):
        decided.append(groups.reuses_scoring_pass(*args, **kwargs))
        raise _Decided                              # the rest of collect does not depend on the config here

    monkeypatch.setattr(rlhf, "reuses_scoring_pass", spy)
    seen = 0
    for batch_size in range(1, 7):
        for minibatch_size in [None, *range(1, batch_size + 1)]:
            for epochs in (1, 3):
                cfg = rlhf.RLHFConfig(batch_size=batch_size, minibatch_size=minibatch_size, epochs=epochs)
                for policy in (plain, dropped):
                    with pytest.raises(_Decided):
                        rlhf.collect(policy, P, P.eval_prompts[:1], 0.1, cfg, torch.Generator().manual_seed(0))
                    assert decided.pop() is _old_rlhf_rule(policy, cfg), (batch_size, minibatch_size, epochs)
                    seen += 1
    assert seen == 2 * 2 * sum(b + 1 for b in range(1, 7))


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

def test_check_reward_fn_refuses_a_function_of_one_argument():
    with pytest.raises(TypeError, match=r"reward_fn must be a function \(prompts, .* its signature is \(y\)"):
        groups.check_reward_fn(lambda y: [1.0] * len(y))
    with pytest.raises(TypeError, match=r"its signature is \(obj, /\)"):
        groups.check_reward_fn(len)
    for fn in (lambda x, y: y, lambda *args: args, lambda x, y, scale=1.0: y, None):
        assert groups.check_reward_fn(fn) is fn


def test_check_group_size_names_both_arguments():
    with pytest.raises(ValueError, match=rf"batch_size \* num_generations .* <= MAX_GROUP_SAMPLES "
                                         rf"\({groups.MAX_GROUP_SAMPLES}\), got batch_size=2 x num_generations=10000"):
        groups.check_group_size(2, 10_000)
    groups.check_group_size(groups.MAX_GROUP_SAMPLES // 4, 4)


def test_sample_groups_refuses_a_huge_k_before_sampling(tiny_prepared):
    P = tiny_prepared
    with pytest.raises(ValueError, match=r"len\(prompts\) \* k .* MAX_GROUP_SAMPLES .* got len\(prompts\)=1 x k=1"):
        groups.sample_groups(P.sft, P.sft, P.tokenizer, ["phone review :"], 10**7, 6)


GROUP_TRAINERS = pytest.mark.parametrize("train", [rloo.train, grpo.train], ids=["rloo", "grpo"])


@GROUP_TRAINERS
@pytest.mark.parametrize("kwargs", [{"batch_size": 10**6}, {"num_generations": 10**6}])
def test_group_trainers_refuse_huge_groups(tiny_prepared, train, kwargs):
    with pytest.raises(ValueError, match=r"batch_size \* num_generations .* must be <= MAX_GROUP_SAMPLES"):
        train(tiny_prepared, **{"steps": 1, "batch_size": 2, "num_generations": 2, **kwargs})


@GROUP_TRAINERS
def test_group_trainers_inside_no_grad_give_the_same_run(tiny_prepared, train):
    plain = train(tiny_prepared, steps=1, batch_size=2, num_generations=2).history.updates
    with torch.no_grad():
        inside = train(tiny_prepared, steps=1, batch_size=2, num_generations=2).history.updates
    assert inside["loss"] == plain["loss"]
    assert inside["kl/exact_per_sequence"] == plain["kl/exact_per_sequence"]


# ----- bad input, round two (issue 27): the user's call and the message it gets --------------------

@pytest.mark.parametrize("seed, step, message", [(-1, 0, r"seed must be >= 0, got -1"),
                                                 (0, -1, r"step must be >= 0, got -1")])
def test_step_seed_names_a_negative_seed_or_step(seed, step, message):
    with pytest.raises(ValueError, match=message):
        groups.step_seed(seed, step)


def test_reuses_scoring_pass_names_policy_and_epochs(model):
    with pytest.raises(TypeError, match=r"policy must be a torch\.nn\.Module .*got NoneType"):
        groups.reuses_scoring_pass(None)
    with pytest.raises(ValueError, match=r"epochs must be >= 1, got 0"):
        groups.reuses_scoring_pass(model, epochs=0)


@GROUP_TRAINERS
def test_group_trainers_interrupted_before_the_policy_exists(tiny_prepared, monkeypatch, train):
    from rlnotes.trainer import TrainingInterrupted, TrainResult

    def stop(ref):
        raise KeyboardInterrupt

    monkeypatch.setattr(rloo if train is rloo.train else grpo, "trainable_copy", stop)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(tiny_prepared, steps=1, batch_size=2, num_generations=2, seed=0)
    result = caught.value.result
    assert isinstance(caught.value, TrainingInterrupted) and isinstance(result, TrainResult)
    assert result.model is None and len(result.history) == 0 and result.config.num_generations == 2
