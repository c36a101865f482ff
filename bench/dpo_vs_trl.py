"""Benchmark: rlnotes' DPO trainer against TRL's DPOTrainer, same model, tokenizer, data, same run.

Both start from the same SFT model (chapter 4's tiny GPT-2, ``prepare.prepare``), use that model as
the frozen reference, train on the same 1500 preference pairs in the same (sequential) order,
with the same optimiser (AdamW, no weight decay, constant learning rate, gradient clipping at
1.0), batch size and beta. Reported: seconds per epoch (wall clock), the per-step loss curves
(largest difference), and the final training loss and held-out implicit-reward accuracy, both
measured by ``rlnotes.dpo.preference_metrics`` for each trained model.

TRL is run twice: with its defaults (the reference model's log-probabilities recomputed at every
step) and with ``precompute_ref_log_probs=True`` (computed once, as rlnotes always does).

Nothing is downloaded: the model and tokenizer are built locally, TRL writes to a temporary
folder, ``report_to="none"``, ``use_cpu=True``. Needs ``pip install -r bench/requirements.txt``.

    .venv/bin/python bench/dpo_vs_trl.py [--epochs 2] [--beta 0.1] [--threads 1] [--repeats 3]
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

from rlnotes import dpo, prepare


def rlnotes_run(sft, train_data, args):
    policy = copy.deepcopy(sft).requires_grad_(True)   # dpo.train trains what is trainable
    t0 = time.perf_counter()
    out = dpo.train(train_data, ref=sft, policy=policy, beta=args.beta, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, max_grad_norm=1.0, shuffle=False, seed=0)
    seconds = time.perf_counter() - t0
    return out.model, out.history.update_array("loss"), seconds


def trl_run(sft, tokenizer, prefs, args, precompute):
    from datasets import Dataset, disable_progress_bars
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    hf_logging.set_verbosity_error()
    disable_progress_bars()
    # TRL concatenates prompt + chosen as strings: the word-level tokenizer needs the space, and
    # " <eos>" so that the EOS is its own word (TRL appends the EOS token only when it is missing).
    eos = tokenizer.eos_token
    data = Dataset.from_dict({"prompt": list(prefs.prompts),
                              "chosen": [f" {y} {eos}" for y in prefs.chosen],
                              "rejected": [f" {y} {eos}" for y in prefs.rejected]})
    policy = copy.deepcopy(sft).requires_grad_(True)
    ref = copy.deepcopy(sft)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(output_dir=out, report_to="none", use_cpu=True, push_to_hub=False, save_strategy="no",
                           per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
                           learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                           weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", beta=args.beta,
                           logging_steps=1, seed=0, train_sampling_strategy="sequential",
                           bf16=False, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0,
                           max_length=None, precompute_ref_log_probs=precompute,
                           precompute_ref_batch_size=512 if precompute else None, disable_tqdm=True)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=data,
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)       # no per-step log dicts on stdout
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        losses = np.array([e["loss"] for e in trainer.state.log_history if "loss" in e])
    return trainer.model, losses, seconds, setup


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the chapters use 1)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each trainer; the fastest is reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    prep = prepare.prepare(seed=0)
    sft, tok = prep.sft, prep.tokenizer
    train_data = prep.train_prefs.encode(tok)
    test_data = prep.test_prefs.encode(tok)
    print(f"{len(prep.train_prefs)} train pairs, {len(prep.test_prefs)} held-out pairs, "
          f"{sum(p.numel() for p in sft.parameters())} parameters, beta {args.beta}, lr {args.lr}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {torch.get_num_threads()} thread(s)")

    # interleaved repeats, so that load from other processes hits every trainer alike; the
    # fastest repeat of each is reported (the runs are deterministic: same losses every time)
    runs = {"rlnotes": lambda: (*rlnotes_run(sft, train_data, args), 0.0),
            "TRL": lambda: trl_run(sft, tok, prep.train_prefs, args, False),
            "TRL precompute_ref": lambda: trl_run(sft, tok, prep.train_prefs, args, True)}
    results, seconds = {}, {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            results[name] = run()
            seconds[name].append(results[name][2])
    results = {name: (m, losses, min(seconds[name]), setup) for name, (m, losses, _, setup) in results.items()}

    base = results["rlnotes"][1]
    print(f"\ns/epoch: fastest of {args.repeats} runs, wall-clock seconds of training divided by epochs (rlnotes' includes its one pass of the"
          " reference model); setup s: TRL's DPOTrainer construction (tokenisation, and the reference pass"
          " when precomputed)")
    print(f"\n{'trainer':20s} {'s/epoch':>8s} {'setup s':>8s} {'final train loss':>17s} "
          f"{'held-out loss':>14s} {'held-out acc':>13s} {'max |dloss| vs rlnotes':>23s}")
    for name, (model, losses, sec, setup) in results.items():
        train_m = dpo.preference_metrics(model, sft, train_data, args.beta)
        test_m = dpo.preference_metrics(model, sft, test_data, args.beta)
        n = min(len(losses), len(base))
        diff = np.abs(losses[:n] - base[:n]).max() if n else float("nan")
        print(f"{name:20s} {sec / args.epochs:8.2f} {setup:8.2f} {train_m['loss']:17.4f} "
              f"{test_m['loss']:14.4f} {test_m['accuracy']:13.3f} {diff:23.2e}")
    print("\nloss curve, every 8th step:")
    for name, (_, losses, _, _) in results.items():
        print(f"  {name:20s}", np.round(losses[::8], 4))
    t_rl = results["rlnotes"][2]
    for name in ("TRL", "TRL precompute_ref"):
        print(f"speed-up of rlnotes over {name}: {results[name][2] / t_rl:.2f}x (seconds per epoch ratio)")


if __name__ == "__main__":
    main()
