"""What the OT margin costs inside a reward-model training step, at 64 pairs per batch.

Measures, with warm-up runs and medians over repeats:
  1. the `ot` margin alone (OTMargin.__call__: cost matrix + log-domain Sinkhorn + margins) on B x D
     embeddings, with the default tolerance (stops when converged) and with tol = 0 (every one of
     `sinkhorn_iters` iterations: the worst case);
  2. a full training step (rm_step forward + backward + AdamW step) of a GPT-NeoX reward model shaped
     like Pythia-410M (hidden 1024, 24 layers, 16 heads, vocab 50304), once with margin `none` and once
     with `ot` (which also asks the model for its hidden states);
and prints the OT margin's share of the step.

A 410M step at 64 pairs is minutes on a small CPU, so `--step-batch` measures the step on fewer pairs
and the table also gives the step time scaled linearly to 64 pairs (compute-bound, so roughly linear;
labelled as an estimate). On a GPU, run the real thing:

    python benchmarks/bench_ot_step.py --device cuda --step-batch 64 --seq-len 512
    python benchmarks/bench_ot_step.py --step-batch 2 --seq-len 32 --repeats 3   # 2-core CPU
    python benchmarks/bench_ot_step.py --tiny                                     # seconds, smoke run

Measured on the shared 2-core AMD EPYC CPU (torch 2.13 CPU, load average 8-11 from other jobs, so
medians are inflated and min/max spread wide): OT margin at B = 64, D = 1024: median 7.1 ms (min 2.4,
20 Sinkhorn iterations; 1 thread), 22.6 ms with all 100 iterations; 410M step (float32, 2 threads)
48 s for 2 pairs x 32 tokens, ~1530 s scaled to 64 pairs: the OT margin is < 0.1% of a step. No GPU
figure yet (no GPU on that machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from marginkit.margins import MarginInputs, MarginSpec, build_margin
from marginkit.margins.ot import OTMargin, OTMarginConfig
from marginkit.train.rm_step import rm_step

SIZES = {  # name -> (hidden, layers, heads, vocab)
    "410m": (1024, 24, 16, 50304),  # EleutherAI/pythia-410m
    "tiny": (64, 2, 4, 512),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--size", choices=sorted(SIZES), default="410m", help="Model shape for the step.")
    p.add_argument("--tiny", action="store_true", help="Shorthand for --size tiny (a smoke run).")
    p.add_argument("--batch", type=int, default=64, help="Pairs per batch for the OT margin (B).")
    p.add_argument("--step-batch", type=int, default=None,
                   help="Pairs per measured training step (default: --batch on cuda, 2 on cpu).")
    p.add_argument("--seq-len", type=int, default=None, help="Tokens per sequence (default: 512 on cuda, 32 on cpu).")
    p.add_argument("--repeats", type=int, default=5, help="Timed runs per measurement (median reported).")
    p.add_argument("--warmup", type=int, default=1, help="Untimed runs first.")
    p.add_argument("--ot-repeats", type=int, default=50, help="Timed runs of the OT margin alone.")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the step (default on cuda).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores).")
    p.add_argument("--skip-step", action="store_true", help="Only time the OT margin.")
    args = p.parse_args(argv)
    if args.tiny:
        args.size = "tiny"
    on_gpu = args.device.startswith("cuda")
    args.step_batch = args.step_batch or (args.batch if on_gpu else 2)
    args.seq_len = args.seq_len or (512 if on_gpu else 32)
    args.bf16 = args.bf16 or on_gpu
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` untimed ones, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def ot_inputs(b: int, d: int, device: torch.device, seed: int = 0) -> MarginInputs:
    """Embeddings with the structure of real pairs (each rejected near its chosen, one shared direction
    as in LM hidden states) and gaps of a part-trained RM, so Sinkhorn does realistic work."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=gen)
    chosen = common + torch.randn(b, d, generator=gen)
    rejected = chosen + 0.7 * torch.randn(b, d, generator=gen)
    gap = 1.5 * torch.randn(b, generator=gen)
    nan = torch.full((b,), float("nan"))
    return MarginInputs(gap.to(device), nan.to(device), nan.to(device), nan.to(device), 10,
                        chosen.to(device), rejected.to(device))


def build_model(size: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, GPTNeoXConfig

    hidden, layers, heads, vocab = SIZES[size]
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=2048, rotary_pct=0.25,
                           use_parallel_residual=True, num_labels=1, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).to(device).train()


def step_timer(model: torch.nn.Module, margin_name: str, b: int, seq_len: int, device: torch.device,
               bf16: bool) -> Callable[[], None]:
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(1, vocab, (2 * b, seq_len), generator=gen).to(device),
             "attention_mask": torch.ones(2 * b, seq_len, dtype=torch.long, device=device)}
    nan = torch.full((b,), float("nan"), device=device)
    batch.update(label_margin=nan, score_gap=nan, gold_gap=nan, index=torch.arange(b, device=device))
    strategy = build_margin(MarginSpec(name=margin_name))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def run() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = rm_step(model, batch, strategy, step=10)
        out.loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    load = " load average {:.1f} {:.1f} {:.1f},".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return (f"{platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads),{load} device {device} ({name})")


def row(what: str, shape: str, times: list[float]) -> str:
    ms = [t * 1e3 for t in times]
    return f"| {what} | {shape} | {statistics.median(ms):.2f} | {min(ms):.2f} | {max(ms):.2f} | {len(ms)} |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hidden = SIZES[args.size][0]
    print(f"machine: {machine(device)}")
    print(f"model: GPT-NeoX {args.size} {SIZES[args.size]} (hidden, layers, heads, vocab); OT batch B={args.batch}, "
          f"D={hidden}; step batch {args.step_batch} pairs x 2 x {args.seq_len} tokens; "
          f"{'bf16 autocast' if args.bf16 else 'float32'}")
    lines = ["| measurement | shape | median ms | min ms | max ms | runs |", "|---|---|---|---|---|---|"]

    x = ot_inputs(args.batch, hidden, device)
    default = OTMargin(OTMarginConfig())
    with torch.no_grad():
        iters = _iterations(default, x)
    t_ot = timed(lambda: default(x), device, args.ot_repeats, 3)
    lines.append(row(f"ot margin (defaults: eps 0.05, tol 1e-6; {iters} Sinkhorn iterations)",
                     f"B={args.batch}, D={hidden}", t_ot))
    worst = OTMargin(OTMarginConfig(sinkhorn_tol=0.0))
    t_worst = timed(lambda: worst(x), device, args.ot_repeats, 3)
    lines.append(row("ot margin (tol 0: all 100 iterations, no host sync)", f"B={args.batch}, D={hidden}", t_worst))

    if not args.skip_step:
        model = build_model(args.size, device)
        shape = f"{args.step_batch} pairs x {args.seq_len} tok"
        t_none = timed(step_timer(model, "none", args.step_batch, args.seq_len, device, args.bf16), device,
                       args.repeats, args.warmup)
        lines.append(row(f"train step, margin none ({args.size})", shape, t_none))
        t_with = timed(step_timer(model, "ot", args.step_batch, args.seq_len, device, args.bf16), device,
                       args.repeats, args.warmup)
        lines.append(row(f"train step, margin ot ({args.size}, with hidden states)", shape, t_with))
    print("\n".join(lines))

    ot_ms = statistics.median(t_ot) * 1e3
    print(f"\nOT margin alone at B={args.batch}: {ot_ms:.2f} ms (worst case {statistics.median(t_worst) * 1e3:.2f} ms)")
    if not args.skip_step:
        step_ms = statistics.median(t_none) * 1e3
        scale = args.batch / args.step_batch
        note = "" if scale == 1 else f" (estimate: measured at {args.step_batch} pairs, scaled x{scale:g})"
        step64 = step_ms * scale
        print(f"step without margin at {args.batch} pairs: {step64:.0f} ms{note}")
        print(f"OT margin share of a {args.batch}-pair step: {ot_ms / (step64 + ot_ms):.4%}")
        print(f"measured step difference ot - none at {args.step_batch} pairs: "
              f"{(statistics.median(t_with) - statistics.median(t_none)) * 1e3:+.1f} ms (noise included)")
    return 0


def _iterations(strategy: OTMargin, x: MarginInputs) -> int:
    from marginkit.margins.ot import ot_cost
    from marginkit.margins.sinkhorn import sinkhorn_log

    cfg = strategy.config
    cost = ot_cost(x.chosen_embeddings.float(), x.rejected_embeddings.float(), x.reward_gap.float(), cfg)
    return sinkhorn_log(cost, cfg.epsilon, cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol).iterations


if __name__ == "__main__":
    sys.exit(main())
