"""Benchmark: rlnotes' KTO (``rlnotes.kto``) against TRL 1.16's KTOTrainer, same model, data and batch.

1. The loss on one batch: a policy that differs from its reference (the SFT model after a few
   rlnotes KTO updates) and the frozen SFT model; TRL's ``KTOTrainer.compute_loss`` on its first
   training batch against ``rlnotes.kto.kto_loss`` on the same examples (log-probabilities scored
   by rlnotes, the KL pairs rotated by one within the batch as TRL does). They must agree to 1e-6.
2. Seconds per update: ``kto.train`` against ``KTOTrainer.train`` on the same unpaired labels
   (``kto.unpaired`` of chapter 4's 1500 pairs: 3000 examples), the same order (sequential), the
   same optimiser (AdamW, no weight decay, constant learning rate, clipping at 1.0), batch size and
   beta; TRL with its defaults (the reference re-run at every step) and with
   ``precompute_ref_log_probs=True``. Also the per-step losses (largest difference to rlnotes').

The TRL configuration that reproduces ``kto.train(data, ref=sft, beta=b, lr=l, batch_size=B,
epochs=E, shuffle=False)`` is ``KTOConfig(beta=b, learning_rate=l, per_device_train_batch_size=B,
num_train_epochs=E, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
optim="adamw_torch", train_sampling_strategy="sequential", desirable_weight=1.0,
undesirable_weight=1.0, loss_type="kto", max_length=None)``; the defaults that matter: TRL's
learning_rate is 1e-6 (rlnotes' 1e-3 is for the tiny model), weight_decay 0 and a linear schedule
(``lr_scheduler_type="linear"``) in transformers' TrainingArguments, and TRL requires the sequential
order (the KL pairs are fixed when the data are tokenised).

Nothing is downloaded: the model and tokenizer are built locally, TRL writes to a temporary
folder, ``report_to="none"``, ``use_cpu=True``. Needs ``pip install -r bench/requirements.txt``.

    /work/benchvenv/bin/python bench/kto_vs_trl.py [--epochs 1] [--beta 0.1] [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings

import numpy as np
import torch

from rlnotes import kto, prepare


def trl_trainer(policy, ref, tokenizer, singles, args, out, precompute=False, epochs=None):
    from datasets import Dataset, disable_progress_bars
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import KTOConfig, KTOTrainer

    hf_logging.set_verbosity_error()
    disable_progress_bars()
    # the word-level tokenizer needs the space, and " <eos>" so that the EOS is its own word
    eos = tokenizer.eos_token
    data = Dataset.from_dict({"prompt": list(singles.prompts),
                              "completion": [f" {y} {eos}" for y in singles.completions],
                              "label": [bool(v) for v in singles.labels]})
    config = KTOConfig(output_dir=out, report_to="none", use_cpu=True, push_to_hub=False, save_strategy="no",
                       per_device_train_batch_size=args.batch_size, num_train_epochs=epochs or args.epochs,
                       learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       max_grad_norm=1.0, optim="adamw_torch", beta=args.beta, desirable_weight=1.0,
                       undesirable_weight=1.0, loss_type="kto", logging_steps=1, seed=0,
                       train_sampling_strategy="sequential", bf16=False, fp16=False, gradient_checkpointing=False,
                       dataloader_num_workers=0, max_length=None, precompute_ref_log_probs=precompute,
                       precompute_ref_batch_size=512 if precompute else None, disable_tqdm=True)
    trainer = KTOTrainer(model=policy, ref_model=ref, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    return trainer


def same_batch(policy, ref, tok, singles, args):
    """TRL's loss and z0 and rlnotes' (``kto.kto_loss``) on TRL's first batch, for a ``policy`` and a ``ref``."""
    policy.eval()
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(copy.deepcopy(policy), copy.deepcopy(ref), tok, singles, args, out)
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            trl_loss = trainer.compute_loss(trainer.model, batch).item()
            trl_kl = trainer._metrics["eval"]["kl"][-1]        # logged under "eval": the policy is in eval mode
    b = args.batch_size
    first = kto.Unpaired(singles.prompts[:b], singles.completions[:b], singles.labels[:b], singles.r_star[:b])
    mates = kto.Unpaired(first.prompts, first.completions[-1:] + first.completions[:-1], first.labels, first.r_star)
    pol, ref_, pol_kl, ref_kl = [kto.reference_logps(m, u.encode(tok)) for u in (first, mates) for m in (policy, ref)]
    up = first.labels
    losses, _, _, z0 = kto.kto_loss(pol[up], pol[~up], pol_kl, ref_[up], ref_[~up], ref_kl, args.beta)
    return trl_loss, losses.mean().item(), trl_kl, z0.item()


def rlnotes_run(sft, data, args):
    t0 = time.perf_counter()
    out = kto.train(data, ref=sft, beta=args.beta, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    max_grad_norm=1.0, shuffle=False, seed=0)
    return out.history.update_array("loss"), time.perf_counter() - t0, 0.0


def trl_run(sft, tok, singles, args, precompute):
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        trainer = trl_trainer(copy.deepcopy(sft).requires_grad_(True), copy.deepcopy(sft), tok, singles, args, out,
                              precompute)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        losses = np.array([e["loss"] for e in trainer.state.log_history if "loss" in e])
    return losses, seconds, setup


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the chapters use 1)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each trainer; the fastest is reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    prep = prepare.prepare(seed=0)
    sft, tok = prep.sft, prep.tokenizer
    singles = kto.unpaired(prep.train_prefs, seed=0)
    data = singles.encode(tok)
    print(f"{len(singles)} unpaired examples ({int(singles.labels.sum())} desirable), beta {args.beta}, lr {args.lr}, "
          f"batch {args.batch_size}, {args.epochs} epoch(s), {torch.get_num_threads()} thread(s)")

    # a policy 47 rlnotes KTO updates away from the SFT model; as the reference of the SFT model too, so that
    # the mismatched pairs' mean log-ratio is positive and z0 is not clamped at 0
    moved = kto.train(data, ref=sft, epochs=1, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
                      shuffle=False).model
    for label, policy, ref in (("policy moved, ref SFT", moved, sft), ("policy SFT, ref moved", sft, moved)):
        trl_loss, our_loss, trl_kl, our_kl = same_batch(policy, ref, tok, singles, args)
        print(f"same batch ({label}): TRL loss {trl_loss:.9f}, rlnotes kto_loss {our_loss:.9f}, "
              f"|diff| {abs(trl_loss - our_loss):.1e}; z0: TRL {trl_kl:.6f}, rlnotes {our_kl:.6f}")
        assert abs(trl_loss - our_loss) < 1e-6 and abs(trl_kl - our_kl) < 1e-4, "rlnotes and TRL differ"

    runs = {"rlnotes": lambda: rlnotes_run(sft, data, args),
            "TRL": lambda: trl_run(sft, tok, singles, args, False),
            "TRL precompute_ref": lambda: trl_run(sft, tok, singles, args, True)}
    results, seconds = {}, {name: [] for name in runs}
    for _ in range(args.repeats):                 # interleaved: load from other processes hits all alike
        for name, run in runs.items():
            results[name] = run()
            seconds[name].append(results[name][1])
    base = results["rlnotes"][0]
    print(f"\n{'trainer':20s} {'updates':>8s} {'s/update':>9s} {'setup s':>8s} {'final loss':>11s} "
          f"{'max |dloss| vs rlnotes':>23s}")
    for name, (losses, _, setup) in results.items():
        n = min(len(losses), len(base))
        print(f"{name:20s} {len(losses):8d} {min(seconds[name]) / len(losses):9.4f} {setup:8.2f} {losses[-1]:11.4f} "
              f"{np.abs(losses[:n] - base[:n]).max():23.2e}")
    print("\nloss curve, every 8th step:")
    for name, (losses, _, _) in results.items():
        print(f"  {name:20s}", np.round(losses[::8], 4))
    for name in ("TRL", "TRL precompute_ref"):
        print(f"speed-up of rlnotes over {name}: {min(seconds[name]) / min(seconds['rlnotes']):.2f}x (fastest runs)")


if __name__ == "__main__":
    main()
