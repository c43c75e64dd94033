"""`marginkit demo`: BT vs fixed, label and oracle margins on the gold-reward world, trained and compared.

Builds the world, a word-level tokenizer and a tiny GPT-NeoX from scratch (no download), trains
one reward model per margin strategy on the same pairs with the same seed, evaluates each on the
test split against the labels *and* the true preference, prints a table and writes a run folder:
per-strategy metrics.jsonl and model/, plots (training curves, gap histograms, accuracy by true
gap bucket, reliability) and summary.json / summary.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginkit.config import RMRunConfig
from marginkit.configlib import from_dict
from marginkit.data.world import WorldConfig, make_world
from marginkit.evaluate.rm_eval import EvalConfig, RMEvalReport, evaluate_rm_dir
from marginkit.evaluate.rm_eval import write_report as write_eval_report
from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir
from marginkit.report.html import write_report as write_html_report
from marginkit.report.plots import (
    plot_accuracy_by_bucket,
    plot_margin_histograms,
    plot_reliability,
    plot_training_curves,
)
from marginkit.threads import THREADS_HELP, check_threads, torch_threads
from marginkit.train.rm import train_reward_model

__all__ = ["DemoSize", "DEMO_SIZES", "DEMO_MARGINS", "DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """`marginkit demo`: BT, fixed, label and oracle margin RMs on the gold world, compared."""

    quick: bool = field(default=False, metadata={"help": "Smaller world and model (under 30 s on 2 cores)."})
    out: str = field(default="runs/demo", metadata={"help": "Run folder."})
    seed: int = field(default=0, metadata={"help": "World, model init and training seed."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP + " The demo's tiny models run fastest on 1."})

    def __post_init__(self) -> None:
        check_threads(self.threads)


@dataclass(frozen=True)
class DemoSize:
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    hidden: int
    layers: int


DEMO_SIZES = {
    # Measured on 2 CPU cores: quick about 4 s per RM, full about 30 s per RM.
    "quick": DemoSize(n_train=2000, n_val=200, n_test=1000, epochs=3, hidden=32, layers=1),
    "full": DemoSize(n_train=8000, n_val=500, n_test=2000, epochs=3, hidden=64, layers=2),
}

# Margin scales are matched to the world's true gaps (median |gap| about 1.1 reward units, graded
# ratings about 0.4 rating points per reward unit), so every margin asks for gaps of similar size.
DEMO_MARGINS: dict[str, dict[str, Any]] = {
    "bt": {"name": "none"},
    "fixed": {"name": "fixed", "fixed": {"value": 1.0}},
    "label": {"name": "label", "label": {"source": "score_gap", "scale": 0.5}},
    "oracle": {"name": "oracle", "oracle": {"scale": 1.0}},
}


def _train_config(model_dir: Path, out: Path, size: DemoSize, seed: int, margin: dict[str, Any]) -> RMRunConfig:
    # lr 3e-3 rather than the paper's 9e-6: this is a from-scratch 2-layer model, not a pretrained LM.
    return from_dict(RMRunConfig, {
        "model": {"name_or_path": str(model_dir)},
        "data": {"tokenize": {"max_length": 64}},
        "margin": margin,
        "train": {"output_dir": str(out), "seed": seed, "learning_rate": 3e-3, "batch_size": 32,
                  "num_epochs": size.epochs, "warmup_ratio": 0.05, "weight_decay": 0.01, "log_every": 10,
                  "eval_every": 0, "progress_bar": False, "overwrite": True},  # the demo remakes its folders
    })


def _row(name: str, rep: RMEvalReport, seconds: float) -> dict[str, Any]:
    ga, near, clear = rep.gold_accuracy, rep.by_gold[0], rep.by_gold[len(rep.by_gold) - 1]
    return {"strategy": name, "acc_labels": rep.accuracy.value, "acc_true": ga.value, "acc_true_low": ga.low,
            "acc_true_high": ga.high, "acc_near_ties": near.accuracy, "acc_clear": clear.accuracy,
            "pearson_true_gap": rep.gold.pearson, "ece": rep.calibration.ece, "gap_skewness": rep.distribution.skewness,
            "train_seconds": seconds}


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'strategy':<8} {'acc(labels)':>11} {'acc(true) [95% CI]':>24} {'near-ties':>9} {'clear':>6} "
            f"{'r(Δ,true)':>9} {'ECE':>6} {'train s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"{r['acc_true']:.3f} [{r['acc_true_low']:.3f}, {r['acc_true_high']:.3f}]"
        lines.append(f"{r['strategy']:<8} {r['acc_labels']:>11.3f} {ci:>24} {r['acc_near_ties']:>9.3f} "
                     f"{r['acc_clear']:>6.3f} {r['pearson_true_gap']:>9.3f} {r['ece']:>6.3f} {r['train_seconds']:>7.1f}")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", quick: bool = False, seed: int = 0, threads: int = 1) -> list[dict[str, Any]]:
    """Run the demo; returns the table rows (also written to out/summary.json). `threads`: torch's
    intra-op threads during the run (marginkit.threads.choose_threads; restored after)."""
    with torch_threads(threads):
        return _run(Path(out), DEMO_SIZES["quick" if quick else "full"], seed)


def _run(out: Path, size: DemoSize, seed: int) -> list[dict[str, Any]]:
    started = time.perf_counter()

    def phase(text: str) -> None:  # one line per phase, so a slow (loaded) machine never looks hung
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    world = make_world(WorldConfig(seed=seed, n_train=size.n_train, n_val=size.n_val, n_test=size.n_test))
    tokenizer = build_word_tokenizer(world.vocabulary())
    base = make_tiny_model_dir(out / "base_model", tokenizer, hidden_size=size.hidden, num_layers=size.layers,
                               max_positions=64, seed=seed)
    print(f"gold world: {len(world.train)} train / {len(world.val)} val / {len(world.test)} test pairs, "
          f"{len(tokenizer)} words; base model {base}")
    rows, reports = [], {}
    for i, (name, margin) in enumerate(DEMO_MARGINS.items(), start=1):
        phase(f"{i}/{len(DEMO_MARGINS)} {name}: training (margin {margin['name']}, {size.epochs} epochs)")
        t0 = time.perf_counter()
        cfg = _train_config(base, out / name, size, seed, margin)
        result = train_reward_model(cfg, world.train, world.val, console=lambda s, n=name: print(f"[{n}] {s}"))
        seconds = time.perf_counter() - t0
        phase(f"{i}/{len(DEMO_MARGINS)} {name}: trained in {seconds:.1f} s; scoring {len(world.test)} test pairs")
        reports[name] = evaluate_rm_dir(result.model_dir, world.test, EvalConfig(swap_test=False, n_boot=500),
                                        progress=False)
        write_eval_report(reports[name], out / name, "eval_test")
        rows.append(_row(name, reports[name], seconds))
    table = format_table(rows)
    print("\ntest split, accuracy against the labels and against the true preference:\n" + table)
    phase("plots and report.html")
    _plots(out, reports)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "summary.md").write_text("```\n" + table + "\n```\n")
    html = write_html_report([out], out / "report.html", title="marginkit demo: margins on the gold-reward world")
    print(f"\nwrote {out}/ (summary.md, {html.name}, plots, per-strategy metrics.jsonl and model/) in "
          f"{time.perf_counter() - started:.1f} s")
    return rows


def _plots(out: Path, reports: dict[str, RMEvalReport]) -> None:
    plot_training_curves({n: out / n / "metrics.jsonl" for n in reports}, out / "training_curves.png")
    plot_margin_histograms({n: r.gaps for n, r in reports.items()}, out / "gap_histograms.png",
                           title="Test reward gap Δ per strategy")
    plot_accuracy_by_bucket({n: list(r.by_gold) for n, r in reports.items()}, out / "accuracy_by_true_gap.png",
                            title="Accuracy vs true preference by |true gap| quartile", xlabel="|true gap| bucket")
    plot_reliability({n: r.calibration for n, r in reports.items()}, out / "reliability.png")
