"""The one training contract (rlnotes.trainer), checked on every trainer of the package.

Each trainer, run on a tiny budget: returns a ``TrainResult``; fills its own frozen config
dataclass, converting whole floats to ints once; logs only keys of the vocabulary below (the
table of CONTRIBUTING.md, which ``test_vocabulary_is_the_table_of_contributing`` keeps in step),
every KL key naming its estimator and unit; logs one value per update for every key; refuses
an unknown keyword by name; repeats itself from a seed; leaves the caller's random state alone.
And importing rlnotes changes nothing global, and the language-model side never loads gymnasium.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlnotes import dpo, grpo, ipo, kto, models, pg, ppo, reward, rlhf, rloo, sft, trpo
from rlnotes.trainer import TrainResult

# ------------------------------------------------------------------------- the vocabulary
# Per trainer: its config class and the log keys it records per update (CONTRIBUTING.md's table).
# ``eval/<name>`` keys of dpo.train's callback are allowed on top (EVAL_CALLBACK).

VOCABULARY = {
    "pg.train": ("PGConfig", {"env_steps", "kl/exact_per_state", "entropy", "loss/value", "seconds"}),
    "trpo.train": ("TRPOConfig", {"env_steps", "kl/exact_per_state", "kl/exact_per_state_full_step", "improvement",
                                  "backtracks", "accepted", "cg_iters", "cg_residual", "step_size", "entropy",
                                  "loss/value", "seconds"}),
    "ppo.train": ("PPOConfig", {"env_steps", "kl/exact_per_state", "kl/k3_per_sample", "clip_ratio/region_mean",
                                "loss/policy", "loss/value", "entropy", "learning_rate", "eps", "ratio_min",
                                "ratio_max", "seconds"}),
    "ppo.epochs_on_one_batch": ("OneBatchConfig", {"kl/exact_per_state", "outside", "ratio_max"}),
    "sft.train": ("SFTConfig", {"loss", "seconds"}),
    "reward.train": ("RewardConfig", {"loss", "accuracy", "seconds"}),
    "rlhf.train": ("RLHFConfig", {"r_phi", "r_star", "kl/exact_per_sequence", "kl/k1_per_sequence", "entropy",
                                      "distinct_1", "distinct_2", "completions/clipped_ratio", "beta", "loss/value",
                                      "seconds"}),
    "dpo.train": ("DPOConfig", {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                                "logps/chosen", "logps/rejected", "seconds", "eval/step", "eval/loss",
                                "eval/accuracy", "eval/margin"}),
    "kto.train": ("KTOConfig", {"loss", "kl/k1_per_sequence", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                "logps/chosen", "logps/rejected", "seconds"}),
}
GROUPS = {"loss", "reward", "reward_std", "frac_reward_zero_std", "kl/exact_per_sequence", "entropy",
          "completions/mean_length", "completions/clipped_ratio", "r_star", "seconds"}
VOCABULARY.update({
    "rloo.train": ("RLOOConfig", GROUPS | {"kl/k1_per_sequence"}),
    "grpo.train": ("GRPOConfig", GROUPS | {"kl/k3_per_token", "clip_ratio/region_mean", "frac_groups_kept"}),
})
EVAL_CALLBACK = "eval/<callback keys>"  # how CONTRIBUTING.md writes dpo's callback keys
KL_KEY = re.compile(r"^kl/(exact|k1|k2|k3)_per_(state|sample|token|sequence)(_full_step)?$")


# ------------------------------------------------------------------------- the trainers
# Every trainer is called the same way, train(<its data>, config=None, *, <named extras>, **overrides)
# (CONTRIBUTING.md): the fixture below makes every call as ``train(data, **extras(), **kwargs)``.
# Each entry: (name, the trainer, kwargs with whole floats for the int fields, the int fields and
# their values, the expected number of updates, the config class).

def inputs(name: str, prepared) -> tuple:
    """Each trainer's data and its named extras (a function, so that a model trained in place, SFT's,
    is fresh for every call)."""
    if prepared is None:
        return "CartPole-v1", dict
    P, tok = prepared, prepared.tokenizer
    return {
        "sft.train": (P.task.sft_corpus(32, seed=11), lambda: dict(
            model=models.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, seed=1), tokenizer=tok)),
        "reward.train": (P.train_prefs, lambda: dict(sft=P.sft, tokenizer=tok)),
        "rlhf.train": (P, dict),
        "rloo.train": (P, dict),
        "grpo.train": (P, dict),
        "dpo.train": (P.train_prefs.encode(tok), lambda: dict(ref=P.sft, eval_data=P.test_prefs.encode(tok))),
        "kto.train": (kto.unpaired(P.train_prefs).encode(tok), lambda: dict(ref=P.sft)),
    }[name]


CONTROL = [
    ("pg.train", pg.train, dict(total_steps=512.0, seed=0, num_envs=4.0, num_steps=64),
     dict(total_steps=512, num_envs=4), 2, pg.PGConfig),
    ("trpo.train", trpo.train, dict(total_steps=512.0, seed=0, num_envs=4, num_steps=64.0, cg_iters=5.0),
     dict(total_steps=512, num_steps=64, cg_iters=5), 2, trpo.TRPOConfig),
    ("ppo.train", ppo.train, dict(total_steps=512.0, seed=0, num_envs=4, num_steps=64, epochs=2.0,
                                  minibatch_size=128.0),
     dict(total_steps=512, epochs=2, minibatch_size=128), 2, ppo.PPOConfig),
    ("ppo.epochs_on_one_batch", ppo.epochs_on_one_batch,
     dict(seed=0, epochs=3.0, num_envs=2, num_steps=16.0, minibatch_size=32),
     dict(epochs=3, num_steps=16), 3, ppo.OneBatchConfig),
]
LM = [
    ("sft.train", sft.train, dict(steps=3.0, batch_size=8.0, seed=0), dict(steps=3, batch_size=8), 3, sft.SFTConfig),
    ("reward.train", reward.train, dict(steps=3.0, batch_size=8, seed=0), dict(steps=3), 3, reward.RewardConfig),
    ("rlhf.train", rlhf.train, dict(steps=2.0, batch_size=4.0, epochs=1, minibatch_size=2.0, seed=0),
     dict(steps=2, batch_size=4, minibatch_size=2), 2, rlhf.RLHFConfig),
    ("dpo.train", dpo.train, dict(epochs=1.0, batch_size=16.0, seed=0), dict(epochs=1, batch_size=16), 2,
     dpo.DPOConfig),
    ("rloo.train", rloo.train, dict(steps=2.0, batch_size=2.0, num_generations=2.0, seed=0),
     dict(steps=2, batch_size=2, num_generations=2), 2, rloo.RLOOConfig),
    ("grpo.train", grpo.train, dict(steps=2.0, batch_size=2, num_generations=2.0, seed=0),
     dict(steps=2, num_generations=2), 2, grpo.GRPOConfig),
    ("dpo.train", dpo.train, dict(epochs=1.0, batch_size=16.0, seed=0, loss_type="ipo"),   # IPO: another loss
     dict(epochs=1, batch_size=16), 2, dpo.DPOConfig),
    ("kto.train", kto.train, dict(epochs=1.0, batch_size=32.0, seed=0), dict(epochs=1, batch_size=32), 2,
     kto.KTOConfig),
]
TRAINERS = CONTROL + LM


@pytest.fixture(params=TRAINERS, ids=[t[0] + ("[ipo]" if t[2].get("loss_type") == "ipo" else "") for t in TRAINERS])
def trainer(request):
    name, train, kwargs, ints, n_updates, config_cls = request.param
    prepared = request.getfixturevalue("tiny_prepared") if any(name == t[0] for t in LM) else None
    data, extras = inputs(name, prepared)

    def run(kw):
        return train(data, **extras(), **kw)

    return name, run, kwargs, ints, n_updates, config_cls, prepared


def _model_states(prepared) -> list:
    """Train/eval mode of every module and requires_grad of every parameter of the caller's models."""
    if prepared is None:
        return []
    roots = {"sft": prepared.sft, "reward_model": prepared.reward_model}
    return ([(r, n, m.training) for r, root in roots.items() for n, m in root.named_modules()]
            + [(r, n, p.requires_grad) for r, root in roots.items() for n, p in root.named_parameters()])


def _random_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same_states(a, b):
    """torch's generator state, NumPy's global state (a tuple holding an array) and Python's, all equal."""
    return (torch.equal(a[0], b[0]) and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
            and a[2] == b[2])


def _parameters(model):
    return [p.detach().clone() for p in model.parameters()]


def _updates_without_time(history):
    return {k: v for k, v in history.updates.items() if k != "seconds"}


# ------------------------------------------------------------------------- the contract

def test_the_contract(trainer):
    name, run, kwargs, ints, n_updates, config_cls, prepared = trainer
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before, models = _random_states(), _model_states(prepared)
    out = run(dict(kwargs))
    # the caller's random state (torch, NumPy, Python) is as it was
    assert _same_states(before, _random_states()), f"{name} changed the caller's random state"
    # the caller's models as they were: train/eval mode and requires_grad, module by module
    changed = [m for m, m2 in zip(models, _model_states(prepared)) if m != m2]
    assert not changed, f"{name} changed the caller's models: {changed[:3]}"

    # a TrainResult, the model under both names
    assert isinstance(out, TrainResult)
    assert out.policy is out.model and isinstance(out.model, torch.nn.Module)

    # the config: the trainer's own frozen dataclass, whole floats converted to ints once
    cfg = out.config
    assert type(cfg) is config_cls and config_cls.__name__ == VOCABULARY[name][0]
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    for field, value in ints.items():
        assert getattr(cfg, field) == value and type(getattr(cfg, field)) is int, field
    assert cfg.as_dict()["seed"] == 0

    # the log keys: the table's, every KL key naming estimator and unit
    keys = set(out.history.updates) | set(out.history.evals)
    assert not any(k.startswith("eval/") for k in out.history.updates), "evaluations go to History.evals"
    allowed = VOCABULARY[name][1]
    assert keys <= allowed, f"{name} logs keys outside the vocabulary: {sorted(keys - allowed)}"
    assert {k for k in allowed if not k.startswith("eval/")} <= keys, f"{name} misses {sorted(allowed - keys)}"
    for key in keys:
        if "kl" in key:
            assert KL_KEY.match(key), f"{name} logs the KL key {key!r}, not kl/<estimator>_per_<unit>"

    # one value per update for every key (the evaluations have a series of their own)
    h = out.history
    assert len(h) == n_updates
    for key in keys:
        values = h.update_array(key)
        assert len(values) == (n_updates if key in h.updates else len(h.evals["eval/step"])), key
        assert np.isfinite(values).all(), key
    assert len(h.episode_ends) == len(h.episode_returns)
    if "env_steps" in keys:  # the control trainers: env_steps counts up to total_steps, episodes inside it
        steps = h.update_array("env_steps")
        np.testing.assert_array_equal(steps, cfg.batch_steps * np.arange(1, n_updates + 1))
        assert steps[-1] >= cfg.total_steps
        assert len(h.episode_returns) > 0 and np.all(np.diff(h.episode_ends) >= 0) and h.episode_ends[-1] <= steps[-1]

    # an unknown keyword is refused by name, and a config of another trainer by type
    with pytest.raises(TypeError, match="learnin_rate"):
        run({**kwargs, "learnin_rate": 1e-3})
    other = sft.SFTConfig() if config_cls is not sft.SFTConfig else dpo.DPOConfig()
    with pytest.raises(TypeError, match=f"config must be a {config_cls.__name__}"):
        run({"config": other})

    # the same seed, the same run (passed again as the config it returned): same history, same weights
    again = run({"config": cfg})
    assert _updates_without_time(again.history) == _updates_without_time(h)
    np.testing.assert_array_equal(again.history.episode_returns, h.episode_returns)
    for p, q in zip(_parameters(out.model), _parameters(again.model)):
        assert torch.equal(p, q)
    if out.value_fn is not None:
        for p, q in zip(_parameters(out.value_fn), _parameters(again.value_fn)):
            assert torch.equal(p, q)
    # ... and another seed, another run: the seed is what the numbers come from
    other_seed = run({**kwargs, "seed": 1})
    assert _updates_without_time(other_seed.history) != _updates_without_time(h)


def test_prepare_leaves_the_callers_generator_alone(tiny_prepare_run):
    _, unchanged = tiny_prepare_run
    assert unchanged


def test_value_fn_where_the_method_learns_one(tiny_prepared):
    from rlnotes.nets import ValueNet

    for fn in (pg.train, trpo.train, ppo.train):
        assert isinstance(fn(total_steps=64, num_envs=2, num_steps=32, seed=0).value_fn, ValueNet)
    out = rlhf.train(tiny_prepared, steps=1, batch_size=2, epochs=1, seed=0)
    assert isinstance(out.value_fn, rlhf.PolicyWithValue) and out.value_fn.lm is out.model


# ------------------------------------------------------------------------- the table

def _contributing_table() -> dict:
    path = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
    if not path.exists():
        pytest.skip("CONTRIBUTING.md is not next to the tests (an installed package)")
    table = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`\w+\.\w+`", cells[0]):
            table[cells[0].strip("`")] = (cells[1].strip("`"), set(re.findall(r"`([^`]+)`", cells[5])))
    return table


def test_vocabulary_is_the_table_of_contributing():
    table = _contributing_table()
    assert set(table) == set(VOCABULARY)
    for name, (config, keys) in table.items():
        assert config == VOCABULARY[name][0], name
        assert keys - {EVAL_CALLBACK} == VOCABULARY[name][1], name


@pytest.mark.parametrize("train", [pg.train, trpo.train, ppo.train], ids=["pg", "trpo", "ppo"])
def test_control_trainers_run_the_same_under_no_grad_and_a_float64_default(train):
    """training_scope: a caller's torch.no_grad() does not reach inside, the networks are float32 whatever
    the default dtype, and the caller's default dtype is handed back."""
    small = dict(total_steps=32, seed=0, num_envs=2, num_steps=8)

    def weights(out):
        return torch.cat([p.detach().reshape(-1) for p in out.model.parameters()])

    plain = weights(train(**small))
    with torch.no_grad():
        quiet = weights(train(**small))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = weights(train(**small))
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(quiet, plain) and torch.equal(wide, plain) and wide.dtype == torch.float32


def test_every_trainer_has_the_one_calling_convention():
    """train(<its data>, config=None, *, <named extras>, **overrides), as CONTRIBUTING.md says."""
    import inspect

    for name, train, *_ in TRAINERS:
        params = list(inspect.signature(train).parameters.values())
        data, config, *extras, overrides = params
        assert data.kind is data.POSITIONAL_OR_KEYWORD and config.name == "config" and config.default is None, name
        assert all(p.kind is p.KEYWORD_ONLY for p in extras), name
        assert overrides.kind is overrides.VAR_KEYWORD and overrides.name == "overrides", name


def test_the_table_names_every_trainer_of_the_package():
    """A trainer added to the package must be added to the table (and so to this test)."""
    import inspect

    import rlnotes.reward
    import rlnotes.sft

    modules = {"pg": pg, "trpo": trpo, "ppo": ppo, "sft": rlnotes.sft, "reward": rlnotes.reward, "rlhf": rlhf,
               "dpo": dpo, "rloo": rloo, "grpo": grpo, "ipo": ipo, "kto": kto}
    found = {f"{m}.{n}" for m, mod in modules.items() for n, f in vars(mod).items()
             if inspect.isfunction(f) and f.__module__ == mod.__name__
             and (n.startswith("train") or n == "epochs_on_one_batch")}
    assert found == set(VOCABULARY)


# ------------------------------------------------------------------------- nothing global on import

@pytest.fixture(scope="module")
def fresh_import():
    """A fresh interpreter: torch on 3 threads, then the LM modules, then the rest of rlnotes."""
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(3)\n"
        "import rlnotes.dpo, rlnotes.rlhf\n"
        "lm_side = sorted(m for m in sys.modules if m.split('.')[0] == 'gymnasium')\n"
        "import rlnotes, rlnotes.pg, rlnotes.trpo, rlnotes.ppo, rlnotes.bandits, rlnotes.widgets\n"
        "print(json.dumps({'lm_side_gymnasium': lm_side, 'threads': torch.get_num_threads()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_rlnotes_leaves_the_thread_count_alone(fresh_import):
    assert fresh_import["threads"] == 3


def test_the_language_model_side_does_not_import_gymnasium(fresh_import):
    assert fresh_import["lm_side_gymnasium"] == []


def test_a_progress_bar_only_when_asked_and_it_changes_no_number(capsys):
    kw = dict(total_steps=128, num_envs=2, num_steps=32, seed=0)
    quiet = pg.train(**kw)
    assert capsys.readouterr().err == ""
    shown = pg.train(**kw, progress=True)
    assert "pg" in capsys.readouterr().err  # tqdm's bar, on stderr outside a notebook
    assert _updates_without_time(shown.history) == _updates_without_time(quiet.history)
    with pytest.raises(TypeError, match="progress must be True or False"):
        pg.train(**kw, progress="yes")
