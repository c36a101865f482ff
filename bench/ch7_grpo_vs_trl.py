"""Benchmark: chapter 7's GRPO family (DAPO, GSPO) in rlnotes against TRL 1.16's GRPOTrainer.

The set-up of ``bench/ch6_vs_trl.py`` (its helpers are imported): chapter 4's SFT'd tiny GPT-2
(``prepare.prepare``), the word-level tokenizer, r* as the reward, 8 prompts x 4 completions of
at most 8 tokens, Adam at a constant learning rate, gradient clipping at 1.0.

1. Losses and gradients on identical inputs: one batch sampled by rlnotes, a policy two Adam steps
   away from pi_old (so that ratios leave the clip range), scored by ``rlnotes.grpo.grpo_loss`` and
   by ``GRPOTrainer._compute_loss`` (TRL's ``use_bias_correction_kl=False``) for the configs of
   ``CASES``: (a) DAPO's clip-higher with its token-level loss, (b) GSPO's sequence-level ratio at
   GSPO's small clip range, (c) truncated completions masked out, on a second batch of the same
   prompts cut at the first batch's median length (at 8 tokens the SFT model almost always ends by
   itself; at the median some responses end and some are cut). TRL
   masks the completion mask in its generation step, so both sides get the same masked mask; that
   TRL's rule for "truncated" (the last token neither EOS nor padding) picks the same responses as
   ``Groups.finished`` is checked on the batch.
2. Seconds per update of a DAPO and a GSPO config (``RUNS``), ``steps`` updates, best of
   ``repeats`` (TRL's trainer construction is not counted). With beta = 0 TRL skips the reference
   model; rlnotes still scores the samples under it (it logs ``kl/exact_per_sequence``).

Writes ``bench/results/ch7_grpo_vs_trl.json``. Needs ``pip install -r bench/requirements.txt``.

    PYTHONPATH=. python bench/ch7_grpo_vs_trl.py [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ch6_vs_trl import B, G, LR, quiet, reward_fn, same_inputs_batch, their_loss  # noqa: E402

from rlnotes import groups, grpo, lm, models, prepare  # noqa: E402

# name -> (TRL's GRPOConfig options, rlnotes' GRPOConfig options): the config that reproduces each run
CASES = {
    "(a) DAPO: dapo loss, eps_high 0.28": (
        dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.04),
        dict(loss_type="dapo", eps=0.2, eps_high=0.28, beta=0.04)),
    "(b) GSPO: sequence ratio, eps 3e-4/4e-4": (
        dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4, beta=0.04),
        dict(loss_type="grpo", importance_sampling_level="sequence", eps=3e-4, eps_high=4e-4, beta=0.04)),
    "(c) mask_truncated_completions, dapo": (
        dict(loss_type="dapo", mask_truncated_completions=True, beta=0.04),
        dict(loss_type="dapo", mask_truncated_completions=True, beta=0.04)),
}
RUNS = {
    "DAPO": (dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, mask_truncated_completions=True),
             dict(loss_type="dapo", eps=0.2, eps_high=0.28, beta=0.0, mask_truncated_completions=True)),
    "GSPO": (dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4, beta=0.0),
             dict(loss_type="grpo", importance_sampling_level="sequence", eps=3e-4, eps_high=4e-4, beta=0.0)),
}
LOSS_OPTIONS = ("eps", "eps_high", "beta", "loss_type", "importance_sampling_level")


def make_trainer(path, P, steps, **options):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_dict({"prompt": P.task.prompts(B * steps, seed=0)})
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, bf16=False, fp16=False,
                     save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, max_steps=steps,
                     per_device_train_batch_size=B * G, num_generations=G, max_completion_length=8,
                     learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
                     temperature=1.0, dataloader_num_workers=0, scale_rewards="group",
                     use_bias_correction_kl=False, **options)
    tok = P.tokenizer
    tok.padding_side = "left"
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward_fn(P.task), args=cfg,
                          train_dataset=data, processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    return trainer


def trl_truncated(g, tok):
    """TRL's rule (``_generate_and_score_completions``): the completion's last token is neither EOS nor padding."""
    ends = {tok.eos_token_id, tok.pad_token_id}
    return torch.tensor([int(ids[m.bool()][-1]) not in ends for ids, m in zip(g.ids, g.mask)])


def our_loss_and_grad(moved, g, adv, mask, max_length, ours):
    moved.zero_grad()
    logp = lm.token_logprobs(moved, *g.tensors(slice(None)))
    kw = {k: v for k, v in ours.items() if k in LOSS_OPTIONS}
    args = (kw.pop("beta"), kw.pop("eps", 0.2), kw.pop("loss_type"), max_length)
    out = grpo.grpo_loss(logp, g.logp, g.ref_logp, adv, mask, *args, **kw)
    out.loss.backward()
    return out, torch.cat([p.grad.flatten() for p in moved.parameters()])


def short_batch(P, g0):
    """The prompts of ``g0`` again, responses cut at ``g0``'s median length (some truncated), advantages,
    the number truncated and the cut."""
    short = int(g0.mask.sum(1).float().median())
    g = groups.sample_groups(P.sft, P.sft, P.tokenizer, g0.prompts[::G], G, short, torch.Generator().manual_seed(1))
    truncated = trl_truncated(g, P.tokenizer)
    assert torch.equal(truncated, ~g.finished.cpu()), "TRL's truncation rule and rlnotes' differ on this batch"
    assert 0 < truncated.sum() < len(truncated), f"{int(truncated.sum())} of {len(truncated)} truncated: no mix"
    adv = grpo.group_advantages(P.task.true_rewards(g.prompts, g.text).view(-1, G)).view(-1)
    return g, adv, int(truncated.sum()), short


def compare_losses(P, path):
    g8, reward, moved = same_inputs_batch(P, 2e-4)
    adv8 = grpo.group_advantages(reward.view(-1, G)).view(-1)
    short, adv_short, n_truncated, cut = short_batch(P, g8)
    out = {"truncated_responses": n_truncated, "cut": cut}
    for name, (theirs_cfg, ours_cfg) in CASES.items():
        masking = ours_cfg.get("mask_truncated_completions", False)
        g, adv = (short, adv_short) if masking else (g8, adv8)
        mask = g.mask * g.finished[:, None] if masking else g.mask
        trainer = make_trainer(path, P, 1, **theirs_cfg)
        inputs = {"prompt_ids": g.prompt_ids, "prompt_mask": g.prompt_mask, "completion_ids": g.ids,
                  "completion_mask": mask, "advantages": adv, "old_per_token_logps": g.logp,
                  "ref_per_token_logps": g.ref_logp, "num_items_in_batch": mask.sum()}
        theirs, their_grad = their_loss(trainer, moved, inputs, grad=True)
        ours, our_grad = our_loss_and_grad(moved, g, adv, mask, P.task.max_response_tokens, ours_cfg)
        out[name] = {"rlnotes": ours.loss.item(), "trl": theirs, "clip_ratio": ours.clip_ratio.item(),
                     "grad_max_abs_diff": (our_grad - their_grad).abs().max().item(),
                     "grad_max_abs": our_grad.abs().max().item(), "trl_config": theirs_cfg, "rlnotes_config": ours_cfg}
    return out


def time_runs(P, path, steps, repeats):
    seconds = {}
    for name, (theirs_cfg, ours_cfg) in RUNS.items():
        ours, theirs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            grpo.train(P, steps=steps, batch_size=B, num_generations=G, lr=LR, seed=0, **ours_cfg)
            ours.append((time.perf_counter() - t0) / steps)
            trainer = make_trainer(path, P, steps, **theirs_cfg)
            t0 = time.perf_counter()
            trainer.train()
            theirs.append((time.perf_counter() - t0) / steps)
        seconds[name] = {"rlnotes": min(ours), "trl": min(theirs), "trl_config": theirs_cfg, "rlnotes_config": ours_cfg}
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--losses-only", action="store_true", help="skip the timings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet()
    import trl

    P = prepare.prepare(seed=0)
    with tempfile.TemporaryDirectory() as path:
        models.save_pretrained(P.sft, P.tokenizer, path)
        losses = compare_losses(P, path)
        seconds = {} if args.losses_only else time_runs(P, path, args.steps, args.repeats)
    print(f"TRL {trl.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"\nloss on identical inputs (case (c): {losses['truncated_responses']} of {B * G} responses truncated "
          f"at {losses['cut']} tokens)")
    print("  case                                       rlnotes       TRL          |diff|"
          "  grad |diff| (max |g|) clipped")
    for name, v in losses.items():
        if isinstance(v, dict):
            print(f"  {name:40s} {v['rlnotes']:+.8f} {v['trl']:+.8f} {abs(v['rlnotes'] - v['trl']):.1e}"
                  f"  {v['grad_max_abs_diff']:.1e} ({v['grad_max_abs']:.1e})  {v['clip_ratio']:.2f}")
    print(f"\nseconds per update ({B} prompts x {G} completions, best of {args.repeats})")
    print("  method   rlnotes     TRL   TRL / rlnotes")
    for name, v in seconds.items():
        print(f"  {name:6s}  {v['rlnotes']:7.3f} {v['trl']:7.3f}   {v['trl'] / v['rlnotes']:.2f}x")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = "ch7_grpo_vs_trl_losses.json" if args.losses_only else "ch7_grpo_vs_trl.json"
    (out / name).write_text(json.dumps({"trl": trl.__version__, "steps": args.steps, "losses": losses,
                                        "seconds_per_update": seconds}, indent=2))


if __name__ == "__main__":
    main()
