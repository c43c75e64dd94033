"""What the paper-faithful real-data check (issue 15) would cost on this CPU: one full-fine-tuning step of a
reward model with SmolLM2-135M-Instruct's shape (and Pythia-410M's), float32, AdamW, at the check's sequence
length, scaled to one epoch of HH-RLHF harmless-test + UltraFeedback train (2,303 + 895 pairs), 3 seeds,
BT + 3 margin variants.

    python benchmarks/bench_paper_check_cpu.py --pairs 2 --seq-len 256 --repeats 2

Models are built from configs (random weights: the cost does not depend on the values), so nothing is
downloaded. Prints the machine, the median step time and the projection.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from transformers import GPTNeoXConfig, LlamaConfig

SHAPES = {
    # SmolLM2-135M: hidden 576, 30 layers, 9 heads (3 kv), intermediate 1536, vocab 49152
    "smollm2-135m": lambda: LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                        num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                        max_position_embeddings=2048, num_labels=1, pad_token_id=0),
    # Pythia-410M: hidden 1024, 24 layers, 16 heads, vocab 50304
    "pythia-410m": lambda: GPTNeoXConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                         intermediate_size=4096, vocab_size=50304, num_labels=1, pad_token_id=0),
}
CHECK_PAIRS = 2303 + 895  # one epoch: HH-RLHF harmless test (valid pairs) + UltraFeedback train split
RUNS = 2 * 3 * 4  # 2 datasets x 3 seeds x (BT + 3 margins)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="smollm2-135m,pythia-410m")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"| shape | params | s per step ({args.pairs} pairs x {args.seq_len} tokens) | s per pair | "
          f"one epoch of {CHECK_PAIRS} pairs | the check ({RUNS} runs) |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(SHAPES[name]())
        opt = torch.optim.AdamW(model.parameters(), lr=9e-6)
        ids = torch.randint(1, 1000, (2 * args.pairs, args.seq_len))
        times = []
        for rep in range(args.repeats + 1):  # the first is warm-up
            t0 = time.perf_counter()
            r = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.squeeze(-1)
            loss = -torch.nn.functional.logsigmoid(r[: args.pairs] - r[args.pairs:]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if rep:
                times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        per_pair = step / args.pairs
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.0f}M | {step:.1f} | {per_pair:.1f} | {per_pair * CHECK_PAIRS / 3600:.1f} h | "
              f"{per_pair * CHECK_PAIRS * RUNS / 3600:.0f} h |")


if __name__ == "__main__":
    main()
