"""Training throughput of marginkit's speed levers against TRL's RewardTrainer and DPOTrainer, in one run.

Every row trains the same randomly initialised GPT-NeoX (Pythia-410M or -1.4B shape, or a tiny one on CPU)
on the same synthetic pairs for a fixed number of optimizer steps after warm-up, each run in a fresh
subprocess (clean peak memory, no compile or allocator state carried over), repeated round robin over the
rows, and reports medians:

    python benchmarks/bench_train.py --size 1.4b --lengths hh long          # GPU: the issue-7 table
    python benchmarks/bench_train.py --size tiny --steps 6 --warmup 2       # CPU: checks that it all runs

Columns: pairs/s; tokens/s (real tokens: prompt + response of chosen and of rejected, so the prompt counts
twice, as in a padded batch, and the same count for every row); MFU = model FLOPs / time / peak FLOPs with
model FLOPs = 6 x parameters x tokens (+ 2 x parameters x tokens for an in-loop reference forward in DPO; the
LM-head and attention FLOPs are not counted); peak memory during training (GPU: max allocated; CPU: the worker's peak RSS, VmHWM);
ratio = pairs/s over the fastest TRL row of the same task and reference source. The peak FLOPs used are printed: a table of
dense bf16 peaks for known GPUs, else a measured float32 matmul rate (CPU).

Data: pairs with HH-RLHF-like lengths (prompt lognormal, median 150 tokens; responses median 60; max 1024)
or a long-prompt setting (prompt median 1000; max 2048), random token ids, EOS at the end of each response.
TRL gets the same token ids (RewardTrainer: pre-tokenised `chosen_ids`/`rejected_ids`; DPOTrainer: one word
per token through a word-level tokenizer, checked to give the same lengths).
Comparable settings: same model init, the same batches (pairs in dataset order: both libraries' shuffles
are replaced, since the padded width depends on which pairs meet), learning rate (constant), AdamW,
precision (bf16 autocast on GPU, float32 on CPU), no eval, no checkpoints, logging every step. TRL rows run with TRL's default gradient
checkpointing (on) and with it off; marginkit rows run without it, except the -gc rows (for memory at
the same batch). TRL is an optional benchmark extra
(`pip install trl`), never a marginkit dependency; without it the TRL rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARCH = dict(rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=2048, tie_word_embeddings=False,
            pad_token_id=0, bos_token_id=2, eos_token_id=3, attention_dropout=0.0, hidden_dropout=0.0)
SIZES = {  # GPT-NeoX shapes: Pythia-410M and -1.4B (EleutherAI/pythia config.json), and a CPU-sized one
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, vocab_size=2048),
    "410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 vocab_size=50304),
    "1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192,
                 vocab_size=50304),
}
LENGTHS = {  # (median, sigma) of lognormal token counts, and the max sequence length (prompt cut from the left)
    "hh": dict(prompt=(150, 0.65), response=(60, 0.7), max_length=1024),
    "long": dict(prompt=(1000, 0.3), response=(60, 0.7), max_length=2048),
}
# name: (task, trainer, options)
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mk-rm-padded": ("rm", "marginkit", {"forward": "padded"}),
    "mk-rm-packed": ("rm", "marginkit", {"forward": "packed"}),
    "mk-rm-prefix": ("rm", "marginkit", {"forward": "prefix_shared"}),
    "mk-rm-prefix-compile": ("rm", "marginkit", {"forward": "prefix_shared", "compile": True}),
    "mk-rm-prefix-gc": ("rm", "marginkit", {"forward": "prefix_shared", "gc": True}),
    "trl-rm": ("rm", "trl", {"gradient_checkpointing": True}),
    "trl-rm-nogc": ("rm", "trl", {"gradient_checkpointing": False}),
    "mk-dpo-padded": ("dpo", "marginkit", {"forward": "padded"}),
    "mk-dpo-packed": ("dpo", "marginkit", {"forward": "packed"}),
    "mk-dpo-prefix": ("dpo", "marginkit", {"forward": "prefix_shared"}),
    "mk-dpo-prefix-precomputed": ("dpo", "marginkit", {"forward": "prefix_shared", "precomputed": True}),
    "mk-dpo-prefix-precomputed-compile": ("dpo", "marginkit", {"forward": "prefix_shared", "precomputed": True,
                                                              "compile": True}),
    "mk-dpo-prefix-gc": ("dpo", "marginkit", {"forward": "prefix_shared", "gc": True}),
    "trl-dpo": ("dpo", "trl", {"gradient_checkpointing": True}),
    "trl-dpo-nogc": ("dpo", "trl", {"gradient_checkpointing": False}),
    "trl-dpo-precomputed": ("dpo", "trl", {"gradient_checkpointing": False, "precomputed": True}),
}
DEFAULT_METHODS = [m for m in METHODS if not m.endswith(("-compile", "-gc"))]  # compiling takes minutes on CPU
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


# ---- data and models (the same in every worker) ----

def make_pairs(n: int, lengths: str, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """n (prompt, chosen, rejected) token-id lists; responses end with EOS (id 3); ids 4.. vocab-1."""
    import numpy as np

    spec = LENGTHS[lengths]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, c, r = (max(1, int(rng.lognormal(math.log(m), s))) for m, s in (spec["prompt"], spec["response"],
                                                                            spec["response"]))
        c, r = min(c, spec["max_length"] // 2), min(r, spec["max_length"] // 2)
        p = min(p, spec["max_length"] - 1 - max(c, r))  # the prompt is cut first, as marginkit's tokenizer does
        ids = rng.integers(4, vocab, size=p + c + r).tolist()
        out.append((ids[:p], ids[p:p + c - 1] + [3], ids[p + c - 1:p + c + r - 2] + [3]))
    return out


def build_model(size: str, task: str, seed: int = 0) -> Any:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

    config = GPTNeoXConfig(**SIZES[size], **ARCH, num_labels=1)
    torch.manual_seed(seed)
    cls = GPTNeoXForSequenceClassification if task == "rm" else GPTNeoXForCausalLM
    return cls(config)


def word_tokenizer(vocab: int) -> Any:
    """Token id i <-> word "w<i>" (ids 0-3: <pad> <unk> <bos> <eos>), so TRL's text path sees our token ids."""
    from marginkit.models.tiny import build_word_tokenizer

    return build_word_tokenizer([f"w{i}" for i in range(4, vocab)])


def text(ids: list[int]) -> str:
    return "".join(f" w{i}" for i in ids if i != 3)


# ---- workers: one training run each, in a subprocess ----

def reset_peak_memory() -> None:
    """Start the peak-memory count at training (after model build, data preparation and any reference
    precomputation, which both libraries do before their loop)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepClock:
    """Wall-clock time at the end of every optimizer step (after a device sync)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, *_: Any, **__: Any) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def in_order(n: int, seed: int, epoch: int) -> list[int]:
    """Replaces the engine's seeded shuffle, as TRL's sampler is replaced by a sequential one: padded cost
    depends on which pairs share a batch, so both libraries must get the same batches."""
    return list(range(n))


def run_marginkit(task: str, opts: dict[str, Any], args: argparse.Namespace, clock: StepClock) -> dict[str, Any]:
    import copy
    from functools import partial

    import torch
    from transformers import get_scheduler

    import marginkit.train.engine as engine_module
    from marginkit.data.collate import LayoutPairCollator, PairCollator
    from marginkit.data.tokenize import EncodedPair
    from marginkit.margins import MarginSpec, build_margin
    from marginkit.models.packing import compile_blocks, select_attention
    from marginkit.train.engine import Engine, TrainConfig
    from marginkit.train.rm import make_accelerator
    from marginkit.train.rm_step import rm_step

    engine_module.epoch_order = in_order  # both libraries see the pairs in dataset order: the same batches
    steps = args.warmup + args.steps
    cfg = TrainConfig(output_dir=args.tmp, learning_rate=1e-5, lr_scheduler="constant", warmup_ratio=0.0,
                      batch_size=args.batch, max_steps=steps, log_every=1, progress_bar=False,
                      mixed_precision="bf16" if torch.cuda.is_available() else "no", forward=opts["forward"],
                      attention=args.attention, torch_compile=bool(opts.get("compile")))
    acc = make_accelerator(cfg)
    model = build_model(args.size, task)
    attention = select_attention(model, cfg.forward, cfg.attention)
    if cfg.torch_compile:
        compile_blocks(model)
    if opts.get("gc"):  # what model.gradient_checkpointing=true does (models/reward.py)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    raw = make_pairs(args.batch * steps, args.lengths, SIZES[args.size]["vocab_size"])
    data = [EncodedPair(p + c, p + r, len(p), math.nan, math.nan, math.nan, i) for i, (p, c, r) in enumerate(raw)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    scheduler = get_scheduler("constant", optimizer)
    collate = PairCollator(0) if cfg.forward == "padded" else LayoutPairCollator(0, cfg.forward)
    if task == "rm":
        step_fn = partial(_rm_step, margin=build_margin(MarginSpec()), rm_step=rm_step)
    else:
        step_fn = _dpo_step_fn(model, data, opts, acc, copy)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    engine = Engine(cfg, acc, model, optimizer, scheduler, collate, log_fn=clock.tick)
    reset_peak_memory()
    engine.fit(step_fn, data)
    return {"attention": attention}


def _rm_step(model: Any, batch: Any, step: int, margin: Any, rm_step: Any) -> Any:
    return rm_step(model, batch, margin, step)


def _dpo_step_fn(model: Any, data: list[Any], opts: dict[str, Any], acc: Any, copy: Any) -> Any:
    from functools import partial

    from marginkit.losses.registry import DPOLossSpec, build_dpo_loss
    from marginkit.models.packing import select_attention
    from marginkit.models.ref_cache import CachedReference, ModelReference, compute_ref_logps
    from marginkit.train.dpo_step import dpo_step

    ref_model = copy.deepcopy(model).to(acc.device)
    select_attention(ref_model, opts["forward"], "auto")
    if opts.get("precomputed"):  # computed once before training (not timed), as `marginkit precompute-ref` does
        reference = CachedReference(compute_ref_logps(ref_model, data, 0, device=acc.device, autocast=acc.autocast),
                                    acc.device)
        del ref_model
    else:
        reference = ModelReference(ref_model)
    return partial(dpo_step, loss_fn=build_dpo_loss(DPOLossSpec()), reference=reference)


def run_trl(task: str, opts: dict[str, Any], args: argparse.Namespace, clock: StepClock) -> dict[str, Any]:
    import copy

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    class Tick(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            reset_peak_memory()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.tick()

    steps = args.warmup + args.steps
    gpu = torch.cuda.is_available()
    vocab = SIZES[args.size]["vocab_size"]
    raw = make_pairs(args.batch * steps, args.lengths, vocab)
    tok = word_tokenizer(vocab)
    common = dict(output_dir=args.tmp, per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=1e-5,
                  lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[],
                  bf16=gpu, use_cpu=not gpu, gradient_checkpointing=opts["gradient_checkpointing"], max_length=None,
                  dataloader_num_workers=0, seed=0, disable_dropout=True)
    model = build_model(args.size, task)
    if task == "rm":
        from trl import RewardConfig, RewardTrainer

        data = Dataset.from_dict({"chosen_ids": [p + c for p, c, _ in raw], "rejected_ids": [p + r for p, _, r in raw]})
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=data, processing_class=tok,
                                callbacks=[Tick()])
    else:
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_dict({"prompt": [text(p).strip() for p, _, _ in raw], "chosen": [text(c) for _, c, _ in raw],
                                  "rejected": [text(r) for _, _, r in raw]})
        precomputed = bool(opts.get("precomputed"))
        ref = None if precomputed else copy.deepcopy(model)  # TRL would reload it by name; ours has none
        trainer = DPOTrainer(model=model, ref_model=ref, args=DPOConfig(**common, precompute_ref_log_probs=precomputed),
                             train_dataset=data, processing_class=tok, callbacks=[Tick()])
        n = sum(len(x["prompt_ids"]) * 2 + len(x["chosen_ids"]) + len(x["rejected_ids"]) for x in trainer.train_dataset)
        want = sum(2 * len(p) + len(c) + len(r) for p, c, r in raw)
        if n != want:
            raise RuntimeError(f"TRL tokenised {n} tokens, marginkit has {want}: the comparison would be unfair")
    trainer._get_train_sampler = lambda *_, **__: torch.utils.data.SequentialSampler(trainer.train_dataset)  # in order
    trainer.train()
    return {"attention": trainer.model.config._attn_implementation}


def worker(spec: dict[str, Any]) -> None:
    import torch

    args = argparse.Namespace(**spec)
    torch.set_num_threads(args.threads)
    task, trainer, opts = METHODS[args.method]
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        info = (run_marginkit if trainer == "marginkit" else run_trl)(task, opts, args, clock)
    times = clock.times
    if len(times) != args.warmup + args.steps:
        raise RuntimeError(f"{args.method}: {len(times)} steps timed, expected {args.warmup + args.steps}")
    seconds = times[-1] - times[args.warmup - 1]
    print("RESULT " + json.dumps({"seconds": seconds, "steps": args.steps, "peak_bytes": peak_memory(), **info}),
          flush=True)


# ---- the driver ----

def machine() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def peak_flops(info: dict[str, Any], threads: int) -> tuple[float, str]:
    """Dense bf16 peak of a known GPU, else a measured float32 matmul rate on `threads` CPU threads."""
    import torch

    if "gpu" in info:
        for name, flops in GPU_PEAK_BF16.items():
            if name in info["gpu"]:
                return flops, f"{name} dense bf16 peak {flops / 1e12:.0f} TFLOP/s (datasheet)"
    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    a @ a
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ a
    rate = 2 * 1024**3 * reps / (time.perf_counter() - start)
    where = "GPU (unknown model)" if "gpu" in info else f"CPU, {threads} thread(s)"
    return rate, f"measured float32 1024x1024 matmul on {where}: {rate / 1e9:.1f} GFLOP/s"


def dataset_stats(args: argparse.Namespace) -> dict[str, float]:
    raw = make_pairs(args.batch * (args.warmup + args.steps), args.lengths, SIZES[args.size]["vocab_size"])
    tokens = [2 * len(p) + len(c) + len(r) for p, c, r in raw]
    padded = computed = 0
    for i in range(0, len(raw), args.batch):  # padded batches [2B, T_max]: the positions a padded forward computes
        chunk = raw[i:i + args.batch]
        padded += 2 * len(chunk) * max(len(p) + max(len(c), len(r)) for p, c, r in chunk)
        computed += sum(len(p) + len(c) + len(r) for p, c, r in chunk)
    return {"tokens_per_pair": statistics.mean(tokens), "padding_fraction": 1 - sum(tokens) / padded,
            "prefix_shared_fraction": computed / sum(tokens)}


def n_params(size: str) -> int:
    return sum(p.numel() for p in build_model(size, "rm").parameters())


def launch(method: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = {k: getattr(args, k) for k in ("size", "lengths", "batch", "steps", "warmup", "threads", "attention")}
    spec["method"] = method
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=args.timeout)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)[-300:] or f"exit {done.returncode}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--lengths", choices=list(LENGTHS), nargs="+", default=["hh"])
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, "all"], default=DEFAULT_METHODS,
                        help="rows to run (default: all but the -compile and -gc variants; 'all': every row)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs per row; the table shows medians")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--attention", default="auto", help="marginkit train.attention for every marginkit row")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--table", type=Path, help="print the tables of a saved --json file and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.table:
        return reprint(args.table)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first timed interval starts at the end of a warm-up step)")

    info = machine()
    flops, flops_note = peak_flops(info, args.threads)
    params = n_params(args.size)
    wanted = list(METHODS) if "all" in args.methods else args.methods
    methods = [m for m in wanted if METHODS[m][1] != "trl" or info["trl"]]
    print(f"machine: {json.dumps(info)}")
    print(f"model: GPT-NeoX {args.size} ({params / 1e6:.1f}M parameters), batch {args.batch} pairs, "
          f"{args.warmup} warm-up + {args.steps} timed steps, median of {args.repeats} runs")
    print(f"peak FLOPs for MFU: {flops_note}")
    if not info["trl"]:
        print("TRL not installed (`pip install trl`): TRL rows skipped")
    results: dict[str, Any] = {"machine": info, "peak_flops": flops, "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": []}
    for lengths in args.lengths:
        args.lengths = lengths
        stats = dataset_stats(args)
        print(f"\n[{lengths}] {stats['tokens_per_pair']:.0f} real tokens a pair; padded batches compute "
              f"{100 * stats['padding_fraction']:.0f}% padding; prefix sharing computes "
              f"{100 * stats['prefix_shared_fraction']:.0f}% of the real tokens")
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for repeat in range(args.repeats):  # round robin: a load change on a shared machine hits every row alike
            for method in methods:
                runs[method].append(launch(method, args))
                result = runs[method][-1]
                print(f"  run {repeat + 1}/{args.repeats} {method}: "
                      f"{result.get('error') or round(args.batch * result['steps'] / result['seconds'], 3)} pairs/s",
                      file=sys.stderr, flush=True)
        rows = [summarise(m, runs[m], stats, params, flops, args) for m in methods]
        results["rows"] += [{"lengths": lengths, **row, "runs": runs[row["method"]]} for row in rows]
        print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def summarise(method: str, runs: list[dict[str, Any]], stats: dict[str, float], params: int, flops: float,
              args: argparse.Namespace) -> dict[str, Any]:
    task, trainer, opts = METHODS[method]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"method": method, "task": task, "error": runs[0]["error"]}
    pairs_s = statistics.median(args.batch * r["steps"] / r["seconds"] for r in ok)
    tokens_s = pairs_s * stats["tokens_per_pair"]
    ref_forward = task == "dpo" and not opts.get("precomputed")
    model_flops = (6 + 2 * ref_forward) * params * tokens_s
    return {"method": method, "task": task, "pairs_s": pairs_s, "tokens_s": tokens_s, "mfu": model_flops / flops,
            "peak_gib": statistics.median(r["peak_bytes"] for r in ok) / 2**30, "attention": ok[0]["attention"],
            "runs_ok": len(ok), "spread": (max(args.batch * r["steps"] / r["seconds"] for r in ok)
                                           - min(args.batch * r["steps"] / r["seconds"] for r in ok)) / pairs_s}


def baseline(method: str) -> tuple[str, bool]:
    """What a row is compared with: TRL rows of the same task and the same reference source (DPO with the
    reference in the loop against TRL's in-loop rows, precomputed against TRL's precomputed row)."""
    task, _, opts = METHODS[method]
    return task, bool(opts.get("precomputed"))


def print_table(rows: list[dict[str, Any]]) -> None:
    best: dict[tuple[str, bool], float] = {}
    for r in rows:
        if r["method"].startswith("trl") and "pairs_s" in r:
            key = baseline(r["method"])
            best[key] = max(best.get(key, 0.0), r["pairs_s"])
    print(f"  {'method':28s} {'pairs/s':>9s} {'tokens/s':>10s} {'MFU':>7s} {'peak GiB':>9s} {'x TRL':>6s} "
          f"{'spread':>7s}  attention")
    for r in rows:
        if "error" in r:
            print(f"  {r['method']:28s} failed: {r['error']}")
            continue
        ref = best.get(baseline(r["method"]))
        ratio = f"{r['pairs_s'] / ref:6.2f}" if ref else "     -"
        print(f"  {r['method']:28s} {r['pairs_s']:9.2f} {r['tokens_s']:10.0f} {100 * r['mfu']:6.1f}% "
              f"{r['peak_gib']:9.2f} {ratio} {100 * r['spread']:6.0f}%  {r['attention']}")
    print("  x TRL: pairs/s over the fastest TRL row of the same task and reference source (in the loop or "
          "precomputed); spread: (max - min) / median over the runs")


def reprint(path: Path) -> None:
    """The tables of a saved --json file."""
    saved = json.loads(path.read_text())
    print(f"machine: {json.dumps(saved['machine'])}")
    for lengths in dict.fromkeys(r["lengths"] for r in saved["rows"]):
        print(f"\n[{lengths}]")
        print_table([r for r in saved["rows"] if r["lengths"] == lengths])


if __name__ == "__main__":
    main()
