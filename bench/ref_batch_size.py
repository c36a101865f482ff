"""Which batch size computes the reference log-probabilities fastest (``rlnotes.pairs.reference_logps``)?

The reference model's pass over all preference pairs runs once, under ``no_grad``, so its batch
size is free: a larger batch amortises per-call overhead, a smaller one keeps the activations
(batch x tokens x 4 x width floats in the MLP) in the CPU's caches. Measured at the book's model
(2 layers, width 64), width 256 (4 layers) and GPT-2 small (12 layers, width 768, 12 heads), one
torch thread, the task's word-level tokenizer and pairs like chapter 5's. Prints seconds per
1000 pairs for each batch size (CPU time of this process, fastest of ``--repeats``) and writes bench/results/ref_batch_size.json.

    .venv/bin/python bench/ref_batch_size.py [--repeats 3] [--pairs 512] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from rlnotes import models, pairs, reward, sentiment

SIZES = {64: (2, 4), 256: (4, 4), 768: (12, 12)}   # width: (layers, heads)


def make_pairs(task, tok, n: int, seed: int = 0) -> dict:
    """``n`` (x, y_w, y_l) pairs of corpus responses (the rejected one belongs to another prompt), labelled by r*."""
    xs, ys = task.sft_corpus(n, seed)
    return reward.label_preferences(task, xs, ys, ys[1:] + ys[:1], seed=seed).encode(tok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--widths", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this process's CPU time (robust to other jobs on shared cores); wall: wall clock")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    data = make_pairs(task, tok, args.pairs)
    out = {}
    print(f"{args.clock} seconds per 1000 pairs, fastest of {args.repeats}; {args.pairs} pairs, 1 thread, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'width':>6} " + " ".join(f"{'bs ' + str(b):>8}" for b in args.batch_sizes))
    for width in args.widths:
        layers, heads = SIZES[width]
        ref = models.tiny_gpt2(tok, n_layer=layers, n_embd=width, n_head=heads).eval()
        pairs.reference_logps(ref, {k: v[:8] for k, v in data.items()}, batch_size=8)  # warm-up
        row = {}
        for _ in range(args.repeats):     # interleaved, so that load from other processes hits every size alike
            for bs in args.batch_sizes:
                t = clock()
                pairs.reference_logps(ref, data, batch_size=bs)
                row[bs] = min(row.get(bs, float("inf")), (clock() - t) * 1000 / args.pairs)
        out[width] = row
        best = min(row, key=row.get)
        print(f"{width:>6} " + " ".join(f"{row[b]:8.3f}" for b in args.batch_sizes) + f"   fastest: {best}")
    path = Path(__file__).parent / "results" / "ref_batch_size.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"pairs": args.pairs, "clock": args.clock, "seconds_per_1000_pairs": out}, indent=1))


if __name__ == "__main__":
    main()
