"""The gold-world policy pipeline: base policy -> SFT -> DPO, judged by the world's true reward.

The world's base policy is a sampler (data/world/policy.py), not a language model, so the LM
pipeline starts from a tiny randomly initialised causal LM with the world's word tokenizer:

1. SFT it on the chosen responses of the world's training pairs (samples of the base policy);
2. DPO it on the same pairs, with the SFT model as the frozen reference;
3. score each policy on held-out test prompts: sample responses with HF `generate` at temperature 1
   and no top-k / top-p (so the samples follow the policy's own distribution), score them with the
   world's true reward, and estimate the KL to the SFT model on the same samples as
   mean[log π(y|x) - log π_sft(y|x)], an unbiased Monte Carlo estimate of KL(π ‖ π_sft) for y ~ π.
   The base sampler is scored too (true reward only: it has no log-probs). The DPO policy's
   implicit reward is also evaluated on the test pairs, as an RM would be (evaluate/dpo_eval.py).

    run_world_pipeline(WorldPipelineConfig(size="quick"))   # ~1 min on 2 CPU cores
    marginkit world pipeline --quick [dpo key=value overrides, e.g. train.batch_size=1]
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from marginkit.config import DPORunConfig, SFTRunConfig
from marginkit.configlib import load_config
from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair
from marginkit.data.tokenize import EncodedPair, TokenizeConfig, encode_pair
from marginkit.data.world import World, WorldConfig, make_world
from marginkit.evaluate.dpo_eval import evaluate_policy_pairs
from marginkit.evaluate.metrics import bootstrap_ci
from marginkit.losses.registry import build_dpo_loss
from marginkit.models.logprobs import forward_logps
from marginkit.models.policy import PolicyConfig, load_policy
from marginkit.models.ref_cache import ModelReference
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir
from marginkit.study.render import read_rows, write_rows
from marginkit.threads import THREADS_HELP, check_threads, torch_threads
from marginkit.train.dpo import DPORunResult, train_dpo
from marginkit.train.sft import ChosenCollator, train_sft

__all__ = ["PipelineSize", "PIPELINE_SIZES", "WorldPipelineConfig", "PolicyScore", "WorldPipelineResult",
           "sample_responses", "score_samples", "world_sft", "world_dpo", "run_world_pipeline", "format_scores"]


@dataclass(frozen=True)
class PipelineSize:
    n_train: int
    n_test_pairs: int
    n_prompts: int  # test prompts sampled for the true-reward evaluation
    samples_per_prompt: int
    hidden: int
    layers: int
    sft_epochs: int
    dpo_epochs: int


PIPELINE_SIZES = {
    # quick: 47 s of CPU time single-threaded (the shared 2-core machine, docs/dpo.md); full: about 4x that.
    "quick": PipelineSize(n_train=3000, n_test_pairs=300, n_prompts=100, samples_per_prompt=4, hidden=64, layers=2,
                          sft_epochs=6, dpo_epochs=2),
    "full": PipelineSize(n_train=6000, n_test_pairs=1000, n_prompts=500, samples_per_prompt=8, hidden=64, layers=2,
                         sft_epochs=8, dpo_epochs=3),
    # For tests: seconds.
    "tiny": PipelineSize(n_train=64, n_test_pairs=16, n_prompts=8, samples_per_prompt=2, hidden=16, layers=1,
                         sft_epochs=1, dpo_epochs=1),
}

# From-scratch tiny LMs learn at rates far above a pretrained model's (the demo's RMs use 3e-3 too).
SFT_DEFAULTS: dict[str, Any] = {"data": {"tokenize": {"max_length": 64}},
                                "train": {"learning_rate": 3e-3, "batch_size": 32, "warmup_ratio": 0.05,
                                          "weight_decay": 0.01, "log_every": 10, "progress_bar": False}}
DPO_DEFAULTS: dict[str, Any] = {"data": {"tokenize": {"max_length": 64}},
                                "train": {"learning_rate": 3e-4, "batch_size": 32, "warmup_ratio": 0.05,
                                          "log_every": 5, "progress_bar": False}}


@dataclass
class WorldPipelineConfig:
    out: str = field(default="runs/world_pipeline", metadata={"help": "Run folder."})
    size: Literal["quick", "full", "tiny"] = field(default="quick", metadata={"help": "Scale (PIPELINE_SIZES)."})
    seed: int = field(default=0, metadata={"help": "World, model init, training and sampling seed."})
    noise: float = field(default=0.5, metadata={"help": "The world's label noise (WorldConfig.noise)."})
    max_new_tokens: int = field(default=24, metadata={"help": "Response length cap when sampling."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP + " The tiny models run fastest on 1."})

    def __post_init__(self) -> None:
        check_threads(self.threads)

    dpo_overrides: list[str] = field(default_factory=list, metadata={
        "help": "key=value overrides of the DPO stage's DPORunConfig, e.g. train.batch_size=1 loss.name=ipo.",
        "positional": True})


@dataclass
class PolicyScore:
    """A policy judged on sampled test responses: mean true reward with a 95% bootstrap interval, the KL
    estimate to the SFT model (None for the base sampler), mean response length in words."""

    name: str
    true_reward: float
    true_reward_low: float
    true_reward_high: float
    kl_to_sft: float | None
    mean_words: float
    n_samples: int


@dataclass
class WorldPipelineResult:
    out: Path
    sft_dir: Path
    dpo_dir: Path
    scores: list[PolicyScore]
    dpo_pairs: dict[str, float]  # implicit-reward accuracy etc. of the DPO policy on the test pairs
    dpo_history: list[dict[str, Any]]
    seconds: float


def _prompt_ids(prompt: str, tokenizer: Any, tokenize: TokenizeConfig) -> list[int]:
    """The prompt's tokens exactly as training saw them (template, BOS, truncation): encode_pair's prompt part."""
    enc = encode_pair(Pair(prompt, "a", "b"), 0, tokenizer, tokenize, Ledger())
    assert enc is not None
    return enc.chosen_ids[:enc.prompt_len]


@torch.no_grad()
def sample_responses(model: nn.Module, tokenizer: Any, prompts: Sequence[str], n: int, seed: int,
                     max_new_tokens: int = 24, tokenize: TokenizeConfig | None = None, batch_size: int = 64,
                     ) -> tuple[list[str], list[EncodedPair]]:
    """n samples per prompt at temperature 1 (no top-k/top-p), prompts repeated in order: [P * n] texts
    and the exact sampled tokens as EncodedPair rows (prompt + response, ending at EOS if one was drawn)."""
    tokenize = tokenize or TokenizeConfig(max_length=64)
    device = next(model.parameters()).device
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_rows = [_prompt_ids(p, tokenizer, tokenize) for p in prompts for _ in range(n)]
    texts, rows = [], []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(prompt_rows), batch_size):
            chunk = prompt_rows[start:start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(chunk):  # left padding: generation continues every row at its end
                ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                  eos_token_id=eos, pad_token_id=pad)  # [b, width + new]
            for r, new in zip(chunk, seqs[:, width:].tolist()):
                response = new[:new.index(eos) + 1] if eos in new else new
                texts.append(tokenizer.decode([t for t in response if t != eos], skip_special_tokens=True).strip())
                rows.append(EncodedPair(r + response, r + response, len(r), float("nan"), float("nan"),
                                        float("nan"), len(rows)))
    return texts, rows


@torch.no_grad()
def sequence_logps_of(model: nn.Module, rows: Sequence[EncodedPair], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """[N] summed log-probs of each row's response tokens (the chosen side) under `model`."""
    device = next(model.parameters()).device
    model.eval()
    collate, out = ChosenCollator(pad_id), []
    for start in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in collate(list(rows[start:start + batch_size])).items()}
        out.append(forward_logps(model, b["input_ids"], b["attention_mask"], b["response_mask"]).sum.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def score_samples(name: str, world: World, prompts: Sequence[str], texts: Sequence[str],
                  kl: np.ndarray | None, seed: int = 0) -> PolicyScore:
    """Mean true reward of texts (prompts repeated to match) with a bootstrap interval, and the KL estimate."""
    reward = world.true_rewards(list(prompts), list(texts))
    low, high = bootstrap_ci(reward, n_boot=500, seed=seed)
    words = np.array([len(t.split()) for t in texts], dtype=float)
    return PolicyScore(name, float(reward.mean()), low, high, None if kl is None else float(kl.mean()),
                       float(words.mean()), len(texts))


def world_sft(world: World, out: Path, size: PipelineSize, seed: int, console: Callable[[str], None] = print) -> Path:
    """A tiny causal LM with the world's vocabulary, SFT'd on the chosen responses; returns its folder."""
    tokenizer = build_word_tokenizer(world.vocabulary())
    base = make_tiny_model_dir(out / "base_lm", tokenizer, hidden_size=size.hidden, num_layers=size.layers,
                               max_positions=64, seed=seed)
    settings = _with(SFT_DEFAULTS, str(base), out / "sft", seed, size.sft_epochs)
    result = train_sft(load_config(SFTRunConfig, None, [], base=settings), world.train, world.val[:200],
                       console=lambda s: console(f"[sft] {s}"))
    return result.model_dir


def world_dpo(world: World, sft_dir: Path, out: Path, size: PipelineSize, seed: int, overrides: Sequence[str] = (),
              console: Callable[[str], None] = print) -> tuple[DPORunConfig, DPORunResult]:
    """DPO the SFT model on the world's training pairs (reference: the SFT model); `overrides` are
    DPORunConfig key=value settings applied last (e.g. train.batch_size=1 train.learning_rate=1e-2)."""
    settings = _with(DPO_DEFAULTS, str(sft_dir), out / "dpo", seed, size.dpo_epochs)
    cfg = load_config(DPORunConfig, None, list(overrides), base=settings)
    return cfg, train_dpo(cfg, world.train, world.val[:200], console=lambda s: console(f"[dpo] {s}"))


def _with(defaults: dict[str, Any], model: str, output_dir: Path, seed: int, epochs: int) -> dict[str, Any]:
    settings = copy.deepcopy(defaults)
    settings["model"] = {"name_or_path": model}
    # overwrite: the pipeline remakes its run folders each time it runs
    settings["train"].update(output_dir=str(output_dir), seed=seed, num_epochs=epochs, overwrite=True)
    return settings


def run_world_pipeline(cfg: WorldPipelineConfig, console: Callable[[str], None] = print) -> WorldPipelineResult:
    """Base policy -> SFT -> DPO on the gold world, each scored by the true reward of its samples."""
    with torch_threads(cfg.threads, console):
        return _run(cfg, console)


def _run(cfg: WorldPipelineConfig, console: Callable[[str], None]) -> WorldPipelineResult:
    started = time.perf_counter()
    size, out = PIPELINE_SIZES[cfg.size], Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(WorldConfig(seed=cfg.seed, n_train=size.n_train, n_val=200, n_test=size.n_test_pairs,
                                   noise=cfg.noise))
    sft_dir = world_sft(world, out, size, cfg.seed, console)
    dpo_cfg, dpo = world_dpo(world, sft_dir, out, size, cfg.seed, cfg.dpo_overrides, console)

    prompts = world.sample_prompts(size.n_prompts, seed=cfg.seed, split="test")
    n = size.samples_per_prompt
    repeated = [p for p in prompts for _ in range(n)]
    base_texts = [t for row in world.policy.sample(prompts, n, seed=cfg.seed) for t in row]
    scores = [score_samples("base policy (world sampler)", world, repeated, base_texts, None, cfg.seed)]
    sft, tokenizer = load_policy(PolicyConfig(), str(sft_dir))
    policy, _ = load_policy(PolicyConfig(), str(dpo.model_dir))
    for name, model in (("sft", sft), ("dpo", policy)):
        texts, rows = sample_responses(model, tokenizer, prompts, n, cfg.seed, cfg.max_new_tokens)
        kl = sequence_logps_of(model, rows, tokenizer.pad_token_id) - sequence_logps_of(sft, rows, tokenizer.pad_token_id)
        scores.append(score_samples(name, world, repeated, texts, kl, cfg.seed))
        (out / f"samples_{name}.jsonl").write_text("".join(json.dumps({"prompt": p, "response": t}) + "\n"
                                                           for p, t in zip(repeated, texts)))
    loss_fn = build_dpo_loss(dpo_cfg.loss)
    report = evaluate_policy_pairs(policy, tokenizer, world.test, dpo_cfg.data.tokenize, dpo_cfg.data.padding_side,
                                   loss_fn, ModelReference(sft) if loss_fn.needs_reference else None, n_boot=500)
    pairs = {"accuracy": report.accuracy.value, **({"accuracy_true": report.gold_accuracy.value}
                                                   if report.gold_accuracy else {}), **report.metrics}
    result = WorldPipelineResult(out, sft_dir, dpo.model_dir, scores, pairs, dpo.history,
                                 time.perf_counter() - started)
    summary = {"seed": cfg.seed, "size": cfg.size, "noise": cfg.noise, "scores": [asdict(s) for s in scores],
               "dpo_test_pairs": pairs, "seconds": result.seconds}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_rows(out / "rows.csv.gz", pipeline_rows(summary))
    console("\n" + format_scores(result))
    return result


def format_scores(result: WorldPipelineResult) -> str:
    head = f"{'policy':<28} {'true reward [95% CI]':>26} {'KL to SFT':>10} {'words':>6}"
    lines = [head, "-" * len(head)]
    for s in result.scores:
        kl = "—" if s.kl_to_sft is None else f"{s.kl_to_sft:.3f}"
        ci = f"{s.true_reward:+.3f} [{s.true_reward_low:+.3f}, {s.true_reward_high:+.3f}]"
        lines.append(f"{s.name:<28} {ci:>26} {kl:>10} {s.mean_words:>6.1f}")
    p = result.dpo_pairs
    lines.append(f"DPO implicit reward on test pairs: accuracy {p['accuracy']:.3f} (labels)"
                 + (f", {p['accuracy_true']:.3f} (true preference)" if "accuracy_true" in p else "")
                 + f"; {result.seconds:.0f} s in all")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- raw rows and the docs table

PIPELINE_ROWS = "study/world_pipeline.csv.gz"  # the committed rows, relative to docs/


def pipeline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per policy of one run (summary.json): seed, size, noise, true reward with its bootstrap interval
    over samples, KL to SFT, mean words; the dpo row adds its implicit reward's test-pair accuracy against the
    labels and the true preference; every row carries the run's wall seconds."""
    pairs = summary["dpo_test_pairs"]
    rows = []
    for s in summary["scores"]:
        row = {"seed": summary["seed"], "size": summary["size"], "noise": summary["noise"], "policy": s["name"],
               **{k: s[k] for k in ("true_reward", "true_reward_low", "true_reward_high", "kl_to_sft", "mean_words",
                                    "n_samples")}, "acc_labels": None, "acc_true": None}
        if s["name"] == "dpo":
            row.update(acc_labels=pairs["accuracy"], acc_true=pairs.get("accuracy_true"))
        rows.append({**row, "seconds": round(summary["seconds"], 1)})
    return rows


def export_pipeline_rows(run_dirs: Sequence[str | Path], dest: str | Path) -> Path:
    """The rows of several `world pipeline` runs (one per seed) as one committed file. A run folder written
    before summary.json carried its seed is read with the seed of its DPO config."""
    rows = []
    for d in map(Path, run_dirs):
        summary = json.loads((d / "summary.json").read_text())
        if "seed" not in summary:
            import yaml

            dpo = yaml.safe_load((d / "dpo" / "config.yaml").read_text())
            summary.update(seed=dpo["train"]["seed"], size="quick", noise=WorldPipelineConfig.noise)
        rows += pipeline_rows(summary)
    return write_rows(dest, sorted(rows, key=lambda r: r["seed"]))


def format_pipeline_table(rows: list[dict[str, Any]]) -> str:
    """The docs table: per policy, the mean over seeds of the true reward, KL and words, with a 95% t-interval
    over seeds, each seed's value; then the DPO implicit reward's accuracy and the wall time per run."""
    from marginkit.evaluate.stats import t_interval

    seeds = sorted({r["seed"] for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    by = {(r["seed"], r["policy"]): r for r in rows}

    def ci(values: list[float], fmt: str) -> str:
        m, lo, hi = t_interval(values)
        return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

    lines = [f"| policy | true reward, mean [95% t over {len(seeds)} seeds] | per seed ({', '.join(map(str, seeds))}) "
             "| KL to SFT | words |", "|---|---|---|---|---|"]
    for name in policies:
        mine = [by[(s, name)] for s in seeds]
        kl = "—" if mine[0]["kl_to_sft"] is None else ci([r["kl_to_sft"] for r in mine], ".2f")
        lines.append(f"| {name} | {ci([r['true_reward'] for r in mine], '+.3f')} | "
                     + ", ".join(f"{r['true_reward']:+.3f}" for r in mine)
                     + f" | {kl} | {ci([r['mean_words'] for r in mine], '.1f')} |")
    dpo = [by[(s, "dpo")] for s in seeds]
    secs = [r["seconds"] for r in dpo]
    lines.append("")
    for other in (p for p in policies if p != "dpo"):  # paired over seeds: same world, same prompts
        diff = [by[(s, "dpo")]["true_reward"] - by[(s, other)]["true_reward"] for s in seeds]
        lines.append(f"DPO minus {other}, paired by seed: {ci(diff, '+.3f')}, DPO higher in "
                     f"{sum(d > 0 for d in diff)} of {len(seeds)} seeds.")
    lines += [f"The DPO policy's implicit reward ranks the test pairs at {ci([r['acc_labels'] for r in dpo], '.3f')} "
              f"against the labels and {ci([r['acc_true'] for r in dpo], '.3f')} against the true preference (mean "
              f"[95% t over seeds]). Run time per seed (the pipeline's own clock, on the shared machine): "
              f"{min(secs):.0f} to {max(secs):.0f} s."]
    return "\n".join(lines) + "\n"


def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
    """study.render's renderer: docs/dpo.md's block `world-pipeline` from docs/study/world_pipeline.csv.gz."""
    return {"dpo.md": {"world-pipeline": format_pipeline_table(read_rows(Path(docs_dir) / PIPELINE_ROWS))}}


__all__ += ["PIPELINE_ROWS", "pipeline_rows", "export_pipeline_rows", "format_pipeline_table", "render_docs"]


# ----------------------------------------------------------------------------- the margin-monitor demo

MONITOR_DEMO_RUNS: dict[str, list[str]] = {
    # the seed-001 configuration: one pair per step, a learning rate far too high for it
    "reckless": ["train.batch_size=1", "train.learning_rate=1e-2", "train.num_epochs=1", "train.warmup_ratio=0",
                 "train.log_every=2"],
    # the same pairs, averaged over 32 per step at a sane rate
    "sane": ["train.batch_size=32", "train.learning_rate=3e-4", "train.num_epochs=2", "train.log_every=2"],
}


@dataclass
class MonitorDemoConfig:
    """`marginkit world monitor-demo`: a reckless and a sane DPO run on the world, watched by the monitor."""

    out: str = field(default="runs/monitor_demo", metadata={"help": "Run folder."})
    seed: int = field(default=0, metadata={"help": "World, model init and training seed."})
    pairs: int = field(default=400, metadata={"help": "Training pairs of both DPO runs."})


def monitor_demo(out: str | Path = "runs/monitor_demo", seed: int = 0, n_pairs: int = 400, size: str = "quick",
                 console: Callable[[str], None] = print) -> dict[str, list[dict[str, Any]]]:
    """SFT a tiny LM on the world once, then DPO it twice on the same `n_pairs` pairs: batch size 1
    at lr 1e-2 (the configuration behind seed 001's exploding margin) and batch 32 at lr 3e-4. The
    margin monitor watches both (action warn); returns each run's alerts (alerts.jsonl rows)."""
    with torch_threads(1, console):  # tiny models: 1 thread (marginkit.threads)
        out, sz = Path(out), PIPELINE_SIZES[size]
        world = make_world(WorldConfig(seed=seed, n_train=sz.n_train, n_val=200, n_test=50))
        sft_dir = world_sft(world, out, sz, seed, console)
        alerts: dict[str, list[dict[str, Any]]] = {}
        for name, overrides in MONITOR_DEMO_RUNS.items():
            settings = _with(DPO_DEFAULTS, str(sft_dir), out / name, seed, 1)
            cfg = load_config(DPORunConfig, None, overrides, base=settings)
            result = train_dpo(cfg, world.train[:n_pairs], None, console=lambda s, n=name: console(f"[{n}] {s}"))
            path = out / name / "alerts.jsonl"
            alerts[name] = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            last = result.history[-1] if result.history else {}
            console(f"[{name}] {len(alerts[name])} alert(s); final logged loss {last.get('loss', float('nan')):.3f}, "
                    f"raw log-ratio gap {last.get('logratios/gap_raw', float('nan')):.1f}")
        for name, rows in alerts.items():
            checks = ", ".join(f"{a['check']} at step {a['step']}" for a in rows) or "none"
            console(f"{name}: alerts: {checks}")
        (out / "monitor_demo.json").write_text(json.dumps(alerts, indent=2) + "\n")
        return alerts


__all__ += ["MONITOR_DEMO_RUNS", "MonitorDemoConfig", "monitor_demo"]
