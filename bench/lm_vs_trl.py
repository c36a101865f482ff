"""Benchmark: rlnotes' language-model trainers against TRL's, same model, tokenizer, data, same run, CPU.

Models: chapter 4's GPT-2 built from a config (``rlnotes.models.tiny_gpt2``) at three sizes, the book's
(2 layers, width 64, 4 heads), width 256 (4 layers, 4 heads) and GPT-2 small's body (12 layers,
width 768, 12 heads), all on the task's word-level tokenizer (a 100-word vocabulary, so the
embedding is small), prompts of 3-7 tokens and responses of up to 8. Both sides start from the
same weights, run on ONE torch thread, with the same batch sizes and the same number of pairs,
sequences or steps. Rows:

- ``DPO``: seconds per epoch of ``rlnotes.dpo.train`` (its one reference pass included) against
  TRL's ``DPOTrainer`` (reference model run at every step) and ``DPOTrainer`` with
  ``precompute_ref_log_probs=True`` (set-up, i.e. tokenisation and the reference pass, counted).
  Same order (sequential), optimiser (AdamW, no weight decay, constant lr, clipping at 1), beta.
  The largest difference between the two per-step loss curves is printed as a check.
- ``reward model``: seconds per step of ``rlnotes.reward.train`` (without its final
  mean-zero normalisation, which TRL has no equivalent of: timed and printed apart) against TRL's
  ``RewardTrainer`` on ``GPT2ForSequenceClassification`` from the same weights (set-up counted on
  both sides: tokenisation).
- ``SFT``: seconds per step of ``rlnotes.sft.train`` against TRL's ``SFTTrainer`` on the same
  prompt-completion pairs (loss on the completion only on both sides; set-up counted).
- ``generation``: seconds per 1000 sampled tokens, ``rlnotes.sampling.sample`` against
  ``model.generate(do_sample=True, top_k=0)`` (what TRL's GRPOTrainer calls without vLLM), same
  left-padded prompts, up to 8 new tokens, stopping at EOS; 64 prompts once each, and (``8 per
  prompt``) 8 prompts 8 times each, as GRPO samples (``generate`` gets each prompt 8 times, as
  GRPOTrainer passes them; ``sampling.sample(k=8)`` runs each prompt once).
- ``GRPO step``: one step of ``rlnotes.grpo.train`` against one step of TRL's ``GRPOTrainer``, same
  settings: 8 prompts x 8 generations (64 sequences), ``beta=0.1`` (so both run their reference
  model), a reward model of the policy's size as the reward (both re-tokenise the decoded text
  for it), one epoch, one gradient step. TRL's trainer construction (it loads the policy, the
  reference and the reward model from disk) is printed apart.
- ``PPO update vs TRL GRPO step``: ``rlnotes.rlhf.train`` with ``steps=1, epochs=1`` (one
  minibatch; sample 64 prompts once each, score with the reward model, reference log-probs, value
  head, GAE, one Adam step) against the same TRL GRPO step (TRL 1.16 has no PPO trainer): not the
  same algorithm (PPO's 64 prompts against GRPO's 8, PPO's value head), the same work per sequence.

Costs are per item so that the sizes compare: seconds per 1000 pairs (DPO, reward model), per
1000 sequences (SFT, GRPO, PPO), per 1000 tokens (generation). Ratios are rlnotes / TRL (below 1:
rlnotes faster). Growth: the cost at width 256 and 768 over the cost at width 64, and, for DPO,
the cost per pair at 1536 pairs over that at 512 (width 64). Each run is repeated ``--repeats``
times at every width, interleaved, and the fastest kept (one run at width 768 varies by several
per cent from the next on an idle machine, and a whole benchmark run by up to 15% from the next);
the ratio within each repeat is also printed, its median and range over the repeats. Two clocks: the CPU
seconds of this process (all its threads; what the code costs, and robust to other jobs on shared
cores) and the wall clock; the ratios to trust on a busy machine are the CPU ones. The load
average before and after is printed. Results also go to bench/results/lm_vs_trl.json. About
10 minutes on 2 idle cores at 3 repeats.

Nothing is downloaded: models and tokenizer are built locally, TRL loads them from a temporary
folder, ``report_to="none"``, ``use_cpu=True``, ``bf16=False``. Needs ``pip install -r bench/requirements.txt``.

    .venv/bin/python bench/lm_vs_trl.py [--repeats 2] [--widths 64 256 768] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's progress bars (its reference pass, model loading)

import numpy as np
import torch

from rlnotes import dpo, grpo, lm, models, prepare, reward, rlhf, sampling, sentiment, sft
from rlnotes.rollout import History

# width: layers, heads, DPO pairs (the first is the one the width comparison uses), reward-model
# steps, SFT steps, generation batches; batch size 64 everywhere (the book's), lr as in the book.
SIZES = {64: dict(layers=2, heads=4, dpo_pairs=(1536, 512), rm_steps=24, sft_steps=24, gen_batches=8),
         256: dict(layers=4, heads=4, dpo_pairs=(512,), rm_steps=8, sft_steps=8, gen_batches=4),
         768: dict(layers=12, heads=12, dpo_pairs=(128,), rm_steps=1, sft_steps=2, gen_batches=2)}
QUICK = {64: dict(dpo_pairs=(256, 128), rm_steps=4, sft_steps=4, gen_batches=2),
         256: dict(dpo_pairs=(128,), rm_steps=2, sft_steps=2, gen_batches=1),
         768: dict(dpo_pairs=(64,), rm_steps=1, sft_steps=1, gen_batches=1)}
BATCH, BETA, LR, MAX_NEW = 64, 0.1, 1e-3, 8


# ------------------------------------------------------------------ rlnotes adapters (one per trainer)
# The trainers' call sites, in one place each: when their return values change (e.g. to a result
# object with .model / .history), only these four functions need to follow.

def rlnotes_dpo(policy, ref, data, **kw):
    """-> (trained policy, per-step losses as an array)."""
    out = dpo.train(data, ref=ref, policy=policy, **kw)
    return out.model, out.history.update_array("loss")


def rlnotes_reward_model(sft, tok, prefs, **kw):
    """-> the trained reward model."""
    return reward.train(prefs, sft=sft, tokenizer=tok, **kw).model


def rlnotes_sft(model, tok, prompts, responses, **kw):
    """-> per-step losses as an array (``model`` is trained in place)."""
    return sft.train((prompts, responses), model=model, tokenizer=tok, **kw).history.update_array("loss")


def rlnotes_ppo(prepared, **kw):
    """-> the trained policy (the LM and its value head, a ``PolicyWithValue``)."""
    return rlhf.train(prepared, **kw).value_fn


def rlnotes_grpo(prepared, reward_fn, **kw):
    """-> the trained policy."""
    return grpo.train(prepared, reward_fn=reward_fn, **kw).model


# ------------------------------------------------------------------------------------ helpers

def now() -> np.ndarray:
    """(wall-clock, process CPU) seconds: the CPU time of this process (all its threads) is what the
    code costs; on cores shared with other jobs the wall clock also counts the time spent waiting."""
    return np.array([time.perf_counter(), time.process_time()])


def timed(fn):
    t = now()
    out = fn()
    return out, now() - t


def make_pairs(task, n: int, seed: int = 0) -> reward.Preferences:
    """``n`` (x, y_w, y_l): two fluent corpus responses per prompt (the second written for another
    prompt), ordered by a Bradley-Terry labeller on r*, like chapter 5's pairs in length and vocabulary."""
    xs, ys = task.sft_corpus(n, seed)
    return reward.label_preferences(task, xs, ys, ys[1:] + ys[:1], seed=seed)


def trl_common(out_dir: str, **kw) -> dict:
    """TrainingArguments shared by every TRL trainer here: CPU, float32, no checkpointing, no saving."""
    return dict(output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
                seed=0, dataloader_num_workers=0, learning_rate=LR, lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
                per_device_train_batch_size=BATCH, push_to_hub=False, **kw)


def quiet(trainer):
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)   # no per-step log dicts on stdout
    return trainer


def text_pairs(tok, prefs):
    """TRL's string format: responses with a leading space and an explicit " <eos>", so that the
    word-level tokenizer sees the same tokens as rlnotes' ``encode_responses`` (TRL appends the EOS
    string without a space when it is missing, which would glue it to the last word)."""
    eos = tok.eos_token
    return {"prompt": list(prefs.prompts), "chosen": [f" {y} {eos}" for y in prefs.chosen],
            "rejected": [f" {y} {eos}" for y in prefs.rejected]}


# --------------------------------------------------------------------------------------- rows

def run_dpo(model, tok, prefs, which: str):
    """Seconds for one epoch over ``prefs`` (and per-step losses)."""
    if which == "rlnotes":
        policy = copy.deepcopy(model).requires_grad_(True)   # dpo.train trains what is trainable
        t = now()
        data = prefs.encode(tok)
        _, losses = rlnotes_dpo(policy, model, data, beta=BETA, epochs=1, batch_size=BATCH, lr=LR,
                                max_grad_norm=1.0, shuffle=False, seed=0)
        return now() - t, losses
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    precompute = which == "TRL precompute_ref"
    policy, ref = copy.deepcopy(model).requires_grad_(True), copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(**trl_common(out, num_train_epochs=1, beta=BETA, train_sampling_strategy="sequential",
                                        max_length=None, precompute_ref_log_probs=precompute,
                                        precompute_ref_batch_size=BATCH if precompute else None))
        t = now()
        trainer = quiet(DPOTrainer(model=policy, ref_model=ref, args=config,
                                   train_dataset=Dataset.from_dict(text_pairs(tok, prefs)), processing_class=tok))
        trainer.train()
        seconds = now() - t
    return seconds, np.array([e["loss"] for e in trainer.state.log_history if "loss" in e])


def run_reward_model(model, tok, prefs, steps: int, which: str):
    """Seconds for ``steps`` steps of batch 64 over ``prefs`` (64 * steps pairs)."""
    if which == "rlnotes":
        rm, seconds = timed(lambda: rlnotes_reward_model(model, tok, prefs, steps=steps, batch_size=BATCH,
                                                         lr=LR, weight_decay=0.0, seed=0))
        # the final mean-zero shift scores every response once more: timed again here, taken out
        _, norm = timed(lambda: rm.normalize_(tok, list(prefs.prompts) * 2, list(prefs.chosen) + list(prefs.rejected)))
        return seconds - norm, norm
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(f"{out}/m")
        rm = GPT2ForSequenceClassification.from_pretrained(f"{out}/m", num_labels=1)
        config = RewardConfig(**trl_common(out, max_steps=steps, max_length=None, train_sampling_strategy="sequential"))
        t = now()
        trainer = quiet(RewardTrainer(model=rm, args=config, train_dataset=Dataset.from_dict(text_pairs(tok, prefs)),
                                      processing_class=tok))
        trainer.train()
        return now() - t, 0.0


def run_sft(model, tok, prompts, responses, steps: int, which: str):
    """Seconds for ``steps`` steps of batch 64."""
    model = copy.deepcopy(model).requires_grad_(True)
    if which == "rlnotes":
        _, seconds = timed(lambda: rlnotes_sft(model, tok, prompts, responses, steps=steps, batch_size=BATCH,
                                               lr=LR, seed=0))
        return seconds
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"prompt": list(prompts), "completion": [f" {y} {tok.eos_token}" for y in responses]})
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(**trl_common(out, max_steps=steps, max_length=None, completion_only_loss=True,
                                        train_sampling_strategy="sequential"))
        t = now()
        trainer = quiet(SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok))
        trainer.train()
        return now() - t


def run_generation(model, tok, prompts, batches: int, which: str, k: int = 1):
    """(seconds, tokens sampled) for ``batches`` batches of 64 sequences: 64 prompts once each, or
    (``k`` > 1) 64 / k prompts k times each, as GRPO samples (``generate`` gets each prompt k
    times, as GRPOTrainer passes them; ``sampling.sample(k=k)`` runs each prompt once)."""
    model.eval()
    seconds, tokens = np.zeros(2), 0
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n = BATCH // k
    for b in range(batches):
        p, pm = lm.encode_prompts(tok, prompts[b * n:(b + 1) * n])
        t = now()
        if which == "rlnotes":
            _, mask = sampling.sample(model, tok, p, pm, MAX_NEW, generator=gen, k=k)
            n_tokens = int(mask.sum())
        else:
            with torch.no_grad():
                p, pm = p.repeat_interleave(k, 0), pm.repeat_interleave(k, 0)
                out = model.generate(input_ids=p, attention_mask=pm, do_sample=True, max_new_tokens=MAX_NEW,
                                     top_k=0, top_p=1.0, temperature=1.0, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)
            new = out[:, p.shape[1]:]
            ended = (new == tok.eos_token_id).int()
            # tokens up to and including the first EOS (generate pads after it)
            n_tokens = int(((ended.cumsum(1) - ended) == 0).sum())
        seconds += now() - t
        tokens += n_tokens
    return seconds, tokens


def prepared_for(model, tok, task, prefs):
    """A ``prepare.Prepared`` around ``model`` (as pi_ref) and an (untrained) reward model of the same size."""
    rm = reward.RewardModel(model).eval().requires_grad_(False)
    return prepare.Prepared(task, tok, model.requires_grad_(False), rm, prefs, prefs,
                         task.prompts(BATCH, 1, "test"), History(), History())


def run_ppo(model, tok, task, prefs):
    """Seconds of one rlnotes PPO update on 64 sampled sequences (64 prompts)."""
    prepared = prepared_for(model, tok, task, prefs)
    _, seconds = timed(lambda: rlnotes_ppo(prepared, beta=BETA, steps=1, batch_size=BATCH, epochs=1, lr=LR, seed=0))
    return seconds


def run_grpo(model, tok, task, prefs, which: str):
    """(seconds of one GRPO step on 64 sampled sequences, 8 prompts x 8, scored by a reward model of
    the policy's size, with a reference model (beta > 0); TRL's set-up seconds). TRL's trainer
    construction (it loads the policy, the reference and the reward model from disk) is not timed."""
    if which == "rlnotes":
        prepared = prepared_for(model, tok, task, prefs)
        reward = lambda prompts, responses: prepared.reward_model.score(tok, prompts, responses)  # noqa: E731
        _, seconds = timed(lambda: rlnotes_grpo(prepared, reward, steps=1, batch_size=BATCH // 8, num_generations=8,
                                                beta=BETA, lr=LR, epochs=1, seed=0))
        return seconds, 0.0
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import GRPOConfig, GRPOTrainer

    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(f"{out}/policy")
        tok.save_pretrained(f"{out}/policy")
        rm = GPT2ForSequenceClassification.from_pretrained(f"{out}/policy", num_labels=1)
        rm.save_pretrained(f"{out}/rm")
        tok.save_pretrained(f"{out}/rm")
        config = GRPOConfig(**trl_common(out, max_steps=1, num_generations=8, max_completion_length=MAX_NEW,
                                         beta=BETA, num_iterations=1, temperature=1.0, top_k=0, top_p=1.0,
                                         shuffle_dataset=False, log_completions=False))
        data = Dataset.from_dict({"prompt": task.prompts(BATCH // 8, 1)})
        t = now()
        trainer = quiet(GRPOTrainer(model=f"{out}/policy", reward_funcs=f"{out}/rm", args=config,
                                    train_dataset=data, processing_class=tok))
        setup = now() - t
        _, seconds = timed(trainer.train)
    return seconds, setup


# ----------------------------------------------------------------------------------- driver

def warm_up(model, tok, task):
    """One forward and backward pass at this size, so that the first timed run does not pay the
    allocator's and oneDNN's first-call costs."""
    xs, ys = task.sft_corpus(BATCH, 99)
    p, r = lm.encode_prompts(tok, xs), lm.encode_responses(tok, ys)
    m = copy.deepcopy(model).requires_grad_(True)
    lm.token_logprobs(m, *p, *r).sum().backward()


CLOCKS = ("wall", "cpu")


def bench_width(width: int, cfg: dict, repeats: int, task, tok) -> dict:
    """Every row at one width: {row: {side: {"wall": cost, "cpu": cost}, ...}} (costs per 1000 items)."""
    model = models.tiny_gpt2(tok, n_layer=cfg["layers"], n_embd=width, n_head=cfg["heads"], seed=0)
    warm_up(model, tok, task)
    res = {"layers": cfg["layers"], "heads": cfg["heads"], "parameters": sum(p.numel() for p in model.parameters())}
    pairs = {n: make_pairs(task, n) for n in cfg["dpo_pairs"]}
    rm_prefs = make_pairs(task, BATCH * cfg["rm_steps"], seed=1)
    sft_x, sft_y = task.sft_corpus(BATCH * cfg["sft_steps"], 2)
    gen_prompts = task.prompts(BATCH * cfg["gen_batches"], 3)
    best, extras = {}, {}

    runs = {}

    def keep(key, seconds, per, extra=None):   # the fastest repeat, on each clock separately; and every repeat
        cost = 1000 * seconds / per
        best[key] = np.minimum(best[key], cost) if key in best else cost
        runs.setdefault(key, []).append(cost.tolist())
        extras[key] = extra

    for r in range(repeats):
        sides = ("rlnotes", "TRL") if r % 2 == 0 else ("TRL", "rlnotes")   # alternate who goes first
        for n, prefs in pairs.items():
            for which in sides + ("TRL precompute_ref",):
                seconds, losses = run_dpo(model, tok, prefs, which)
                keep(f"dpo/{n}/{which}", seconds, n, losses)
        for which in sides:
            seconds, norm = run_reward_model(model, tok, rm_prefs, cfg["rm_steps"], which)
            keep(f"rm/{which}", seconds, BATCH * cfg["rm_steps"], norm)
            keep(f"sft/{which}", run_sft(model, tok, sft_x, sft_y, cfg["sft_steps"], which), BATCH * cfg["sft_steps"])
            seconds, tokens = run_generation(model, tok, gen_prompts, cfg["gen_batches"], which)
            keep(f"gen/{which}", seconds, tokens, tokens)
            seconds, tokens = run_generation(model, tok, gen_prompts, cfg["gen_batches"], which, k=8)
            keep(f"gen8/{which}", seconds, tokens, tokens)
            seconds, setup = run_grpo(model, tok, task, rm_prefs, which)
            keep(f"grpo/{which}", seconds, BATCH, setup)
            if which == "rlnotes":
                keep("ppo/rlnotes", run_ppo(model, tok, task, rm_prefs), BATCH)
        print(f"  width {width}: repeat {r + 1}/{repeats} done, load average {os.getloadavg()[0]:.2f}", flush=True)

    for key, cost in best.items():
        row, side = key.rsplit("/", 1)
        res.setdefault(row, {})[side] = dict(zip(CLOCKS, cost.tolist()))
        res[row].setdefault("repeats", {})[side] = runs[key]   # [[wall, cpu] per repeat]
    for n in pairs:
        base = extras[f"dpo/{n}/rlnotes"]
        res[f"dpo/{n}"]["max_abs_loss_diff_vs_TRL"] = float(np.max(np.abs(extras[f"dpo/{n}/TRL"][:len(base)] - base)))
    res["rm"]["rlnotes_normalisation_s"] = dict(zip(CLOCKS, extras["rm/rlnotes"].tolist()))
    res["gen"]["tokens"] = {w: extras[f"gen/{w}"] for w in ("rlnotes", "TRL")}
    res["gen8"]["tokens"] = {w: extras[f"gen8/{w}"] for w in ("rlnotes", "TRL")}
    res["grpo"]["TRL_setup_s"] = dict(zip(CLOCKS, extras["grpo/TRL"].tolist()))
    res["ppo"]["TRL"] = res["grpo"]["TRL"]   # PPO's peer: TRL's GRPO step (TRL 1.16 has no PPO trainer)
    res["ppo"]["repeats"]["TRL"] = res["grpo"]["repeats"]["TRL"]
    return res


ROWS = (("DPO epoch, s/1000 pairs", "dpo", "TRL"),
        ("DPO vs TRL precompute (set-up counted)", "dpo", "TRL precompute_ref"),
        ("reward model, s/1000 pairs", "rm", "TRL"),
        ("SFT, s/1000 sequences", "sft", "TRL"),
        ("generation, s/1000 tokens", "gen", "TRL"),
        ("generation, 8 per prompt, s/1000 tokens", "gen8", "TRL"),
        ("GRPO step, s/1000 seqs", "grpo", "TRL"),
        ("PPO update vs TRL GRPO step, s/1000 seqs", "ppo", "TRL"))


def row_key(key: str, width: int) -> str:
    return f"dpo/{SIZES[width]['dpo_pairs'][0]}" if key == "dpo" else key


def table(results: dict, widths: list, clock: str) -> list[str]:
    growth = [w for w in widths if w != 64] if 64 in widths else []
    head = (f"{clock + ' seconds':40s}" + "".join(f"{f'w{w} rlnotes':>13s}{'TRL':>9s}{'ratio':>7s}" for w in widths)
            + "".join(f"{f'{w}/64 rl':>10s}{'TRL':>7s}" for w in growth))
    lines = [head, "-" * len(head)]
    for name, key, peer in ROWS:
        line = f"{name:40s}"
        for w in widths:
            c = results[w][row_key(key, w)]
            line += f"{c['rlnotes'][clock]:13.3f}{c[peer][clock]:9.3f}{c['rlnotes'][clock] / c[peer][clock]:7.2f}"
        for w in growth:
            c, c64 = results[w][row_key(key, w)], results[64][row_key(key, 64)]
            line += f"{c['rlnotes'][clock] / c64['rlnotes'][clock]:10.1f}{c[peer][clock] / c64[peer][clock]:7.1f}"
        lines.append(line)
    return lines


def paired(results: dict, widths: list, clock: str) -> list[str]:
    """The ratio within each repeat (the two sides ran minutes apart, not the whole run apart):
    median, and min-max over the repeats. Robust to a machine that drifts during the run."""
    i = CLOCKS.index(clock)
    head = f"{'ratio per repeat, ' + clock:40s}" + "".join(f"{f'w{w} median':>14s}{'min-max':>13s}" for w in widths)
    lines = [head, "-" * len(head)]
    for name, key, peer in ROWS:
        line = f"{name:40s}"
        for w in widths:
            reps = results[w][row_key(key, w)]["repeats"]
            ratios = np.array([a[i] / b[i] for a, b in zip(reps["rlnotes"], reps[peer])])
            line += f"{np.median(ratios):14.2f}{f'{ratios.min():.2f}-{ratios.max():.2f}':>13s}"
        lines.append(line)
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each row at every width (the fastest is kept)")
    ap.add_argument("--widths", type=int, nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every row runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    import trl
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    if args.quick:
        for w, q in QUICK.items():
            SIZES[w] = {**SIZES[w], **q}
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl {trl.__version__}, "
          f"{os.cpu_count()} cores, 1 torch thread, batch {BATCH}; load average {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    results = {}
    for width in args.widths:
        results[width] = bench_width(width, SIZES[width], args.repeats, task, tok)
        assert torch.get_num_threads() == 1, "a trainer changed the number of torch threads"
    load_after = os.getloadavg()
    for clock in ("cpu", "wall"):
        print()
        for line in table(results, args.widths, clock):
            print(line)
    print("cpu: this process's CPU seconds (all threads); wall: wall-clock seconds. ratio: rlnotes / TRL "
          "(below 1: rlnotes faster); w/64: the cost at that width over the cost at width 64")
    print()
    for line in paired(results, args.widths, "cpu"):
        print(line)
    if 64 in results and len(SIZES[64]["dpo_pairs"]) > 1:
        big, small = SIZES[64]["dpo_pairs"]
        a, b = results[64][f"dpo/{big}"], results[64][f"dpo/{small}"]
        for clock in ("cpu", "wall"):
            print(f"DPO, width 64, {clock}: cost per pair at {big} pairs over that at {small}: "
                  + ", ".join(f"{s} {a[s][clock] / b[s][clock]:.2f}" for s in ("rlnotes", "TRL", "TRL precompute_ref"))
                  + f"; at {small} pairs rlnotes/TRL {b['rlnotes'][clock] / b['TRL'][clock]:.2f}, "
                  f"rlnotes/TRL precompute_ref {b['rlnotes'][clock] / b['TRL precompute_ref'][clock]:.2f}")
    for w in args.widths:
        r, n = results[w], SIZES[w]["dpo_pairs"][0]
        print(f"width {w}: {r['layers']} layers, {r['parameters']:,} parameters; DPO max |loss rlnotes - TRL| "
              f"{r[f'dpo/{n}']['max_abs_loss_diff_vs_TRL']:.1e}; not counted: rlnotes' reward-model normalisation "
              f"{r['rm']['rlnotes_normalisation_s']['cpu']:.2f} s, GRPOTrainer set-up {r['grpo']['TRL_setup_s']['cpu']:.2f} s (cpu)")
    print(f"total {time.perf_counter() - t0:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    path = Path(__file__).parent / "results" / "lm_vs_trl.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "quick": args.quick,
                                "sizes": {w: SIZES[w] for w in args.widths}, "batch_size": BATCH,
                                "results": results}, indent=1, default=list))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
