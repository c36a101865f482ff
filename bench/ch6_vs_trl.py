"""Benchmark: rlnotes' GRPO and RLOO trainers against TRL 1.16's GRPOTrainer and RLOOTrainer.

Same model (chapter 4's SFT'd tiny GPT-2, ``prepare.prepare``, also the frozen reference), same
word-level tokenizer, same train prompts, same reward function (the verifiable r*), same sizes:
8 prompts x 4 completions per step, completions of at most 8 tokens, one optimiser step per
batch, Adam(W) at a constant learning rate, gradient clipping at 1.0.

1. Losses on identical inputs. One batch of completions is sampled once (by rlnotes), scored by
   r*, turned into advantages; a policy a few Adam steps away from pi_old (so that ratios leave
   the clip range) is scored by both libraries on the same tensors: ``rlnotes.grpo.grpo_loss``
   against ``GRPOTrainer._compute_loss`` for loss types "grpo", "dr_grpo" and "dapo" (beta 0.04),
   with TRL's ``use_bias_correction_kl=False`` (its default, True, multiplies k3 by the ratio;
   the two agree at ratio 1, i.e. with one update per batch), and ``rlnotes.rloo.rloo_loss``
   against ``RLOOTrainer._compute_loss`` at pi = pi_old, loss and gradient (TRL clips RLOO's
   sequence-level ratio, rlnotes takes one update per batch and does not). The
   prompts all have the same length, so neither library pads them (TRL passes no position ids).
2. Seconds per update: ``steps`` updates of each trainer, best of ``repeats`` runs (TRL's
   trainer construction, which loads the reference from disk, is not counted).

Nothing is downloaded: model and tokenizer are saved to a temporary folder (TRL loads its
reference model from the policy's path when beta > 0), ``report_to="none"``, ``use_cpu=True``.
Writes ``bench/results/ch6_vs_trl.json``. Needs ``pip install -r bench/requirements.txt``.

    .venv/bin/python bench/ch6_vs_trl.py [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from rlnotes import groups, grpo, lm, models, prepare, rloo
from rlnotes.trainer import trainable_copy

B, G, LR, BETA_GRPO, BETA_RLOO = 8, 4, 1e-3, 0.04, 0.05


def quiet():
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    disable_progress_bars()
    warnings.filterwarnings("ignore")
    logging.getLogger("trl").setLevel(logging.ERROR)


def reward_fn(task):
    def r_star(completions, prompts=None, **kw):
        return task.true_rewards(list(prompts), [c.strip() for c in completions]).tolist()
    r_star.__name__ = "r_star"
    return r_star


def make_trainer(kind, path, P, steps, loss_type="grpo", kl_ratio=False):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    prompts = P.task.prompts(B * steps, seed=0)
    data = Dataset.from_dict({"prompt": prompts})
    common = dict(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, bf16=False, fp16=False,
                  save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, max_steps=steps,
                  per_device_train_batch_size=B * G, num_generations=G, max_completion_length=8,
                  learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
                  temperature=1.0, dataloader_num_workers=0)
    tok = P.tokenizer
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path)
    if kind == "grpo":
        cfg = GRPOConfig(beta=BETA_GRPO, loss_type=loss_type, scale_rewards="group", use_bias_correction_kl=kl_ratio,
                         **common)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_fn(P.task), args=cfg, train_dataset=data,
                              processing_class=tok)
    else:
        cfg = RLOOConfig(beta=BETA_RLOO, normalize_advantages=False, **common)
        trainer = RLOOTrainer(model=model, reward_funcs=reward_fn(P.task), args=cfg, train_dataset=data,
                              processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    return trainer


def same_inputs_batch(P, lr):
    """One batch sampled by rlnotes from pi_old = pi_ref on same-length prompts, a moved policy, advantages."""
    items = ("movie", "book", "album", "game", "show", "phone", "hotel", "cafe")
    prompts = [f"review of the {item} :" for item in items]
    g = groups.sample_groups(P.sft, P.sft, P.tokenizer, prompts, G, P.task.max_response_tokens,
                             torch.Generator().manual_seed(0))
    assert bool(g.prompt_mask.all()), "the prompts must need no padding"
    reward = P.task.true_rewards(g.prompts, g.text)
    moved = trainable_copy(P.sft)
    opt = torch.optim.Adam(moved.parameters(), lr=lr)
    for _ in range(2):                                     # two steps away from pi_old
        opt.zero_grad()
        (-(lm.token_logprobs(moved, *g.tensors(slice(None))).sum(1) * (reward - reward.mean())).mean()).backward()
        opt.step()
    return g, reward, moved


def their_loss(trainer, moved, inputs, grad=False):
    """TRL's loss of the policy ``moved`` (its weights loaded into the trainer's own, patched, model);
    with ``grad`` also the gradient, flattened in the order of ``moved.parameters()``."""
    model = trainer.model
    model.load_state_dict(moved.state_dict())
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    if not grad:
        with torch.no_grad():
            return trainer._compute_loss(model, inputs).item()
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    named = dict(model.named_parameters())
    grads = [named[name].grad for name, _ in moved.named_parameters()]
    flat = [(torch.zeros_like(p) if gr is None else gr).flatten() for gr, p in zip(grads, moved.parameters())]
    return loss.item(), torch.cat(flat)


def compare_losses(P, path):
    g, reward, moved = same_inputs_batch(P, 2e-4)
    out = {}
    adv_g = grpo.group_advantages(reward.view(-1, G)).view(-1)
    for loss_type in grpo.LOSS_TYPES:
        trainer = make_trainer("grpo", path, P, 1, loss_type)
        inputs = {"prompt_ids": g.prompt_ids, "prompt_mask": g.prompt_mask, "completion_ids": g.ids,
                  "completion_mask": g.mask, "advantages": adv_g, "old_per_token_logps": g.logp,
                  "ref_per_token_logps": g.ref_logp, "num_items_in_batch": g.mask.sum()}
        theirs = their_loss(trainer, moved, inputs)
        logp = lm.token_logprobs(moved, *g.tensors(slice(None)))
        ours = grpo.grpo_loss(logp, g.logp, g.ref_logp, adv_g, g.mask, BETA_GRPO, 0.2, loss_type,
                              P.task.max_response_tokens)
        out[f"GRPO {loss_type}"] = {"rlnotes": ours.loss.item(), "trl": theirs,
                                    "clip_ratio": ours.clip_ratio.item()}
    # RLOO: TRL clips the sequence-level ratio, rlnotes does not (one update per batch): compare the loss and
    # its gradient (REINFORCE with the leave-one-out baseline) at pi = pi_old, where the two must agree
    policy = trainable_copy(P.sft)
    trainer = make_trainer("rloo", path, P, 1)
    k1 = (g.logp - g.ref_logp).sum(1)
    adv_r = rloo.rloo_advantages((reward - BETA_RLOO * k1).view(-1, G)).view(-1)
    inputs = {"prompt_ids": g.prompt_ids, "prompt_mask": g.prompt_mask, "completion_ids": g.ids,
              "completion_mask": g.mask, "advantages": adv_r, "old_logps": g.logp.sum(1)}
    theirs, their_grad = their_loss(trainer, policy, inputs, grad=True)
    logp = lm.token_logprobs(policy, *g.tensors(slice(None))).sum(1)
    ours = rloo.rloo_loss(logp, g.logp.sum(1), adv_r)
    ours.backward()
    our_grad = torch.cat([p.grad.flatten() for p in policy.parameters()])
    out["RLOO"] = {"rlnotes": ours.item(), "trl": theirs, "clip_ratio": 0.0,
                   "grad_max_abs_diff": (our_grad - their_grad).abs().max().item(),
                   "grad_max_abs": our_grad.abs().max().item()}
    return out


def time_runs(P, path, steps, repeats):
    seconds = {}
    for name in ("GRPO", "RLOO"):
        ours, theirs = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if name == "GRPO":
                grpo.train(P, steps=steps, batch_size=B, num_generations=G, lr=LR, beta=BETA_GRPO, seed=0)
            else:
                rloo.train(P, steps=steps, batch_size=B, num_generations=G, lr=LR, beta=BETA_RLOO, seed=0)
            ours.append((time.perf_counter() - t0) / steps)
            trainer = make_trainer(name.lower(), path, P, steps)
            t0 = time.perf_counter()
            trainer.train()
            theirs.append((time.perf_counter() - t0) / steps)
        seconds[name] = {"rlnotes": min(ours), "trl": min(theirs)}
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)  # both sides on one thread (rlnotes no longer sets it on import)
    quiet()
    import trl

    P = prepare.prepare(seed=0)
    with tempfile.TemporaryDirectory() as path:
        models.save_pretrained(P.sft, P.tokenizer, path)
        losses = compare_losses(P, path)
        seconds = time_runs(P, path, args.steps, args.repeats)
    print(f"TRL {trl.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("\nloss on identical inputs        rlnotes          TRL        |diff|   clipped")
    for name, v in losses.items():
        print(f"  {name:16s} {v['rlnotes']:+.8f} {v['trl']:+.8f}   {abs(v['rlnotes'] - v['trl']):.1e}"
              f"   {v['clip_ratio']:.2f}")
    r = losses["RLOO"]
    print(f"  RLOO gradient: largest difference {r['grad_max_abs_diff']:.1e} (largest entry {r['grad_max_abs']:.1e})")
    print(f"\nseconds per update ({B} prompts x {G} completions, best of {args.repeats})")
    print("  method   rlnotes     TRL   TRL / rlnotes")
    for name, v in seconds.items():
        print(f"  {name:6s}  {v['rlnotes']:7.3f} {v['trl']:7.3f}   {v['trl'] / v['rlnotes']:.2f}x")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ch6_vs_trl.json").write_text(json.dumps({"trl": trl.__version__, "steps": args.steps,
                                                     "losses": losses, "seconds_per_update": seconds}, indent=2))


if __name__ == "__main__":
    main()
