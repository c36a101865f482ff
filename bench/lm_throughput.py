"""Tokens per second of chapter 4's phases: SFT, reward-model training, PPO generation and PPO updates.

Run by hand: ``python bench/lm_throughput.py`` (CPU with one thread and with every core, and
CUDA when available). ``--n-layer/--n-embd`` scale the GPT-2 up to see where a GPU starts to pay.
Tokens counted: prompt + response tokens per sequence processed (x2 for the reward model's
chosen/rejected pair); for generation, the response tokens sampled.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rlnotes import lm, models, prepare, reward, rlhf, sampling, sentiment, sft


def bench(device: str, threads: int | None, n_layer: int, n_embd: int, steps: int, batch: int) -> dict:
    if threads is not None:
        torch.set_num_threads(threads)
    task = sentiment.SentimentTask()
    tok = sentiment.build_tokenizer(task)
    model = models.tiny_gpt2(tok, n_layer=n_layer, n_embd=n_embd, n_head=4).to(device)
    xs, ys = task.sft_corpus(2000, seed=0)
    p, pm = lm.encode_prompts(tok, xs[:batch], device)
    r, rm = lm.encode_responses(tok, ys[:batch], device=device)
    seq_tokens = int(pm.sum() + rm.sum())

    def timed(fn):
        fn(1)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(steps)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    out = {}
    out["sft"] = steps * seq_tokens / timed(lambda n: sft.train((xs, ys), model=model, tokenizer=tok, steps=n, batch_size=batch))
    model.requires_grad_(False)
    y1, y2 = reward.sample_pairs(model, tok, xs[:256], seed=0)
    prefs = reward.label_preferences(task, xs[:256], y1, y2, seed=0)
    out["reward_model"] = 2 * steps * seq_tokens / timed(
        lambda n: reward.train(prefs, sft=model, tokenizer=tok, steps=n, batch_size=batch))
    gen = torch.Generator(device=device).manual_seed(0)
    sampled = []

    def generate(n):
        for _ in range(n):
            ids, mask = sampling.sample(model, tok, p, pm, task.max_response_tokens, generator=gen)
            sampled.append(int(mask.sum()))
    seconds = timed(generate)
    out["generation"] = sum(sampled[1:]) / seconds
    prepared = prepare.prepare(0, n_sft=256, sft_steps=2, n_pairs=32, n_test_pairs=8, rm_steps=2, n_eval_prompts=8,
                            model=models.tiny_gpt2(tok, n_layer=n_layer, n_embd=n_embd), tokenizer=tok, device=device)
    updates = max(2, steps // 10)
    t = time.perf_counter()
    rlhf.train(prepared, beta=0.1, steps=updates, batch_size=batch)
    out["ppo_update"] = updates * batch * (seq_tokens / batch) / (time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    runs = [("cpu", 1)] + ([("cpu", cores)] if cores > 1 else [])
    runs += [("cuda", None)] if torch.cuda.is_available() else []
    default_threads = torch.get_num_threads()  # what `import rlnotes` set
    print(f"GPT-2 n_layer={args.n_layer} n_embd={args.n_embd}, batch {args.batch}, {args.steps} steps; tokens/s")
    print(f"{'device':>14} {'SFT':>10} {'reward model':>13} {'generation':>11} {'PPO (all)':>10}")
    for device, threads in runs:
        res = bench(device, threads, args.n_layer, args.n_embd, args.steps, args.batch)
        name = f"{device}/{threads}thr" if device == "cpu" else torch.cuda.get_device_name()
        print(f"{name:>14} {res['sft']:>10.0f} {res['reward_model']:>13.0f} {res['generation']:>11.0f} "
              f"{res['ppo_update']:>10.0f}")
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
