"""rlnotes.measure: a policy measured on held-out prompts (``evaluate``), its exact sequence-level
KL to pi_ref (``kl_to_ref``), the estimators k1, k2, k3 against it (``compare_kl_estimators``), and
what each refuses. ``evaluate`` after PPO is tested in test_rlhf.py."""

import copy
import dataclasses

import pytest
import torch

from rlnotes import lm, measure, models, rlhf


@pytest.fixture(scope="module")
def prepared(prepared_sft20):
    """Phases 1 and 2 at the size these tests need (conftest.py's ``prepared_sft20``)."""
    return prepared_sft20


def test_kl_to_ref_of_a_model_to_itself_is_zero(prepared):
    p = lm.encode_prompts(prepared.tokenizer, ["phone review :"])
    r = lm.encode_responses(prepared.tokenizer, ["good ."])
    assert measure.kl_to_ref(prepared.sft, prepared.sft, *p, *r).item() == pytest.approx(0.0, abs=1e-6)


def test_compare_kl_estimators(prepared):
    same = measure.compare_kl_estimators(prepared.sft, prepared, n_prompts=4, n_draws=8)
    assert same["exact"] == pytest.approx(0.0, abs=1e-6) and same["k1"]["std"] == pytest.approx(0.0, abs=1e-6)
    other = rlhf.PolicyWithValue(models.tiny_gpt2(prepared.tokenizer, seed=5))
    res = measure.compare_kl_estimators(other, prepared, n_prompts=8, n_draws=2000)
    assert res["exact"] > 0.1
    assert abs(res["k1"]["bias"]) < 0.1 * res["exact"] and abs(res["k3"]["bias"]) < 0.1 * res["exact"]
    assert res["k2"]["negative"] == 0 and res["k3"]["negative"] == 0 and res["k1"]["negative"] > 0


# ------------------------------------------------------------- bad input

def test_evaluate_refuses_what_is_not_a_prepared_or_a_module(tiny_prepared):
    with pytest.raises(TypeError, match="prepared must be a Prepared .* got NoneType"):
        measure.evaluate(tiny_prepared.sft, None)
    with pytest.raises(TypeError, match="policy must be a causal LM or a PolicyWithValue .* got NoneType"):
        measure.evaluate(None, tiny_prepared)


def test_evaluate_checks_the_reward_models_scores(tiny_prepared):
    twice = dataclasses.replace(tiny_prepared, reward_model=lambda p, pm, ids, mask: torch.zeros(2 * len(p)))
    with pytest.raises(ValueError, match=r"prepared.reward_model must return one number per response \(8\).*16 values"):
        measure.evaluate(tiny_prepared.sft, twice)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        measure.evaluate(tiny_prepared.sft, tiny_prepared, seed=-1)


def test_compare_kl_estimators_refuses_more_prompts_than_there_are(tiny_prepared):
    with pytest.raises(ValueError, match=r"n_prompts must be <= len\(prepared.eval_prompts\) \(8\), got 64"):
        measure.compare_kl_estimators(tiny_prepared.sft, tiny_prepared, n_prompts=64)
    assert measure.compare_kl_estimators(tiny_prepared.sft, tiny_prepared, n_prompts=8, n_draws=2)["exact"] == \
        pytest.approx(0.0, abs=1e-6)   # all of them is fine


def test_evaluate_runs_in_eval_mode_and_hands_the_model_back(tiny_prepared):  # fix27 item 20
    model = copy.deepcopy(tiny_prepared.sft)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    prompts = tiny_prepared.eval_prompts[:4]
    expected = measure.evaluate(model.eval(), tiny_prepared, prompts, seed=3)
    model.train()
    before = torch.get_rng_state()
    assert measure.evaluate(model, tiny_prepared, prompts, seed=3) == expected  # sampled in eval mode
    assert torch.equal(torch.get_rng_state(), before)                           # no dropout drew from it
    assert model.training and all(m.training for m in model.modules())         # handed back as found


# ------------------------------------------------ bad input, round two (issue 27): the user's call, the message

def test_evaluate_refuses_a_reward_model_as_policy(tiny_prepared):
    with pytest.raises(TypeError, match=r"policy must be a causal LM \(its forward .* got a RewardModel"):
        measure.evaluate(tiny_prepared.reward_model, tiny_prepared)


def test_evaluate_refuses_a_huge_n_repeats_before_sampling(tiny_prepared):
    with pytest.raises(ValueError, match=rf"len\(prompts\) \* n_repeats .* <= MAX_EVAL_SAMPLES "
                                         rf"\({measure.MAX_EVAL_SAMPLES}\), got 8 x n_repeats=1000000"):
        measure.evaluate(tiny_prepared.sft, tiny_prepared, n_repeats=10**6)


def test_kl_to_ref_refuses_a_ref_that_is_not_a_model(tiny_prepared):
    p = lm.encode_prompts(tiny_prepared.tokenizer, ["phone review :"])
    r = lm.encode_responses(tiny_prepared.tokenizer, ["good ."])
    with pytest.raises(TypeError, match=r"ref must be a causal LM or a PolicyWithValue .* got NoneType"):
        measure.kl_to_ref(tiny_prepared.sft, None, *p, *r)


def test_compare_kl_estimators_refuses_a_huge_n_draws(tiny_prepared):
    with pytest.raises(ValueError, match=rf"n_draws must be <= MAX_KL_DRAWS \({measure.MAX_KL_DRAWS}\) .*1000000000"):
        measure.compare_kl_estimators(tiny_prepared.sft, tiny_prepared, n_prompts=4, n_draws=10**9)
