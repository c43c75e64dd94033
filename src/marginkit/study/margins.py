"""`marginkit study margins`: which margin strategies help, measured over seeds and noise levels.

The run book. For every noise level and seed the study builds the gold-reward world, trains one
reward model per strategy variant on the same pairs from the same initial weights, and records

- accuracy against the *true* preference on the test split (true ties left out), also split into
  near-ties (lowest |true gap| quartile) and clear pairs (highest quartile);
- the Pearson correlation between the predicted gap Δ and the true gap;
- the skewness of the test gap distribution (the confidence paper's "right-shift" claim);
- the validation curve of true-preference accuracy, evaluated every `eval_every` steps, from which
  "steps to reach BT's final accuracy" is read (the OT paper's convergence claim). Validation, not
  test: the curve is also what chooses each family's default (see below).

Each family (fixed, label, confidence, ot, ...) may have several variants (a scale grid). The
summary marks, per family and noise level, the variant with the best mean *validation* accuracy;
test numbers are reported for every variant but never used to choose. Intervals are 95% Student-t
intervals over seeds; "vs BT" columns are paired differences (same world, same initial weights).

Strategies that need trained reference RMs (confidence with `reference` or `ensemble`) use the BT
RMs of the same (noise, seed): the seed's own BT run as the reference, and `ensemble_size` BT runs
that differ only in their training seed as the ensemble.

Results are appended to results.jsonl as each run ends, so an interrupted study resumes where it
stopped; summary.json, study.md and plots are rebuilt from all rows at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marginkit.evaluate.stats import format_interval, t_interval
from marginkit.threads import THREADS_HELP, check_threads, run_units

__all__ = ["StudyVariant", "STUDY_VARIANTS", "StudySize", "STUDY_SIZES", "StudyConfig", "run_study", "summarize",
           "format_markdown"]


@dataclass(frozen=True)
class StudyVariant:
    """One trained configuration: `margin` is a MarginSpec dict; the strings "{reference}" and
    "{ensemble}" in it are replaced by the BT reference folder / list of folders of the same run."""

    name: str
    family: str
    margin: dict[str, Any]
    needs_reference: bool = False
    needs_ensemble: bool = False


def _v(name: str, family: str, margin: dict[str, Any], **kw: Any) -> StudyVariant:
    return StudyVariant(name, family, margin, **kw)


# The grid. Scales are in true-reward units of the world (median |true gap| about 1.1).
STUDY_VARIANTS: dict[str, StudyVariant] = {v.name: v for v in [
    _v("bt", "bt", {"name": "none"}),
    _v("fixed-0.5", "fixed", {"name": "fixed", "fixed": {"value": 0.5}}),
    _v("fixed-1", "fixed", {"name": "fixed", "fixed": {"value": 1.0}}),
    _v("label-0.25", "label", {"name": "label", "label": {"source": "score_gap", "scale": 0.25}}),
    _v("label-0.5", "label", {"name": "label", "label": {"source": "score_gap", "scale": 0.5}}),
    _v("oracle-0.5", "oracle", {"name": "oracle", "oracle": {"scale": 0.5}}),
    _v("oracle-1", "oracle", {"name": "oracle", "oracle": {"scale": 1.0}}),
    # confidence (seed 000): batch-mean margin on the pairs below the batch mean (the paper), or on all pairs
    _v("conf-batch", "confidence", {"name": "confidence"}),
    _v("conf-batch-all", "confidence", {"name": "confidence", "confidence": {"filter": "none"}}),
    # reward confidence: the gap of this seed's own BT RM, or the mean gap of BT RMs differing only by seed
    _v("conf-ref", "confidence", {"name": "confidence", "confidence": {"source": "reference",
                                                                       "reference_model": "{reference}"}},
       needs_reference=True),
    _v("conf-ens", "confidence", {"name": "confidence", "confidence": {"source": "ensemble",
                                                                       "ensemble_models": "{ensemble}"}},
       needs_ensemble=True),
    # OT (seed 002, APLOT): the RM's own hidden states; plan-derived hardness in [0, 1] times the scale
    _v("ot-1", "ot", {"name": "ot", "ot": {"scale": 1.0}}),
    _v("ot-2", "ot", {"name": "ot", "ot": {"scale": 2.0}}),
    _v("ot-diag-2", "ot", {"name": "ot", "ot": {"scale": 2.0, "margin_from": "diagonal_mass"}}),
]}


def register_variant(variant: StudyVariant) -> None:
    """Add a variant to the grid (used for strategies registered after this module, e.g. confidence, ot)."""
    STUDY_VARIANTS[variant.name] = variant


@dataclass(frozen=True)
class StudySize:
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    hidden: int
    layers: int
    eval_every: int


STUDY_SIZES = {
    # quick: the demo's quick world, about 5 s per RM on 2 CPU cores.
    "quick": StudySize(n_train=2000, n_val=500, n_test=1000, epochs=3, hidden=32, layers=1, eval_every=20),
    # full: the demo's full world, about 35 s per RM on 2 CPU cores.
    "full": StudySize(n_train=8000, n_val=1000, n_test=2000, epochs=3, hidden=64, layers=2, eval_every=50),
}


@dataclass
class StudyConfig:
    """`marginkit study margins` on the gold-reward world (`--task world`)."""

    out: str = field(default="runs/study_margins", metadata={
        "help": "Study folder (results.jsonl makes it resumable)."})
    size: Literal["quick", "full"] = field(default="quick", metadata={
        "help": "World and model size (STUDY_SIZES): quick about 5 s per RM on 2 CPU cores, full about 35 s. "
                "`study margins --task` (real data) reads it as the REAL_SIZES preset instead."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "Training seeds."})
    noises: list[float] = field(default_factory=lambda: [0.5, 1.0], metadata={
        "help": "Label-noise levels of the world (the BT temperature of its labels)."})
    variants: list[str] | None = field(default=None, metadata={
        "help": "Variant names (None: every registered variant; bt always runs)."})
    jobs: int = field(default=1, metadata={"help": "(noise, seed) units trained in parallel processes."})
    ensemble_size: int = field(default=3, metadata={
        "help": "BT RMs (differing by training seed) behind the confidence ensemble variant."})
    learning_rate: float = field(default=3e-3, metadata={"help": "RM learning rate of every variant."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per optimizer step."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP + " The world's tiny models run fastest on 1."})

    def __post_init__(self) -> None:
        check_threads(self.threads)

    def chosen_variants(self) -> list[StudyVariant]:
        names = list(self.variants) if self.variants else list(STUDY_VARIANTS)
        unknown = [n for n in names if n not in STUDY_VARIANTS]
        if unknown:
            raise ValueError(f"unknown study variants {unknown}; known: {sorted(STUDY_VARIANTS)}")
        if "bt" not in names:
            names.insert(0, "bt")  # every comparison is against BT
        return [STUDY_VARIANTS[n] for n in names]


# ----------------------------------------------------------------------------- one (noise, seed) unit


def _fill(margin: Any, reference: str | None, ensemble: list[str]) -> Any:
    if isinstance(margin, dict):
        return {k: _fill(v, reference, ensemble) for k, v in margin.items()}
    if margin == "{reference}":
        return reference
    if margin == "{ensemble}":
        return ensemble
    return margin


def _train_one(world: Any, base: Path, out: Path, size: StudySize, cfg: StudyConfig, seed: int,
               margin: dict[str, Any]) -> tuple[Path, list[dict[str, Any]], float]:
    from marginkit.config import RMRunConfig
    from marginkit.configlib import from_dict
    from marginkit.train.rm import train_reward_model

    run_cfg = from_dict(RMRunConfig, {
        "model": {"name_or_path": str(base)},
        "data": {"tokenize": {"max_length": 64}, "cache_dir": str(Path(cfg.out) / "cache")},
        "margin": margin,
        "train": {"output_dir": str(out), "seed": seed, "learning_rate": cfg.learning_rate,
                  "batch_size": cfg.batch_size, "num_epochs": size.epochs, "warmup_ratio": 0.05,
                  "weight_decay": 0.01, "log_every": 10, "eval_every": size.eval_every, "progress_bar": False,
                  "save_every": 0, "overwrite": True},  # a study remakes its run folders
    })
    t0 = time.perf_counter()
    result = train_reward_model(run_cfg, world.train, world.val, console=lambda s: None)
    curve = [{"step": h["step"], "val_gold_acc": h["eval_rewards/gold_accuracies"]}
             for h in result.history if "eval_rewards/gold_accuracies" in h]
    return result.model_dir, curve, time.perf_counter() - t0


def _evaluate(model_dir: Path, pairs: list[Any]) -> dict[str, Any]:
    from marginkit.evaluate.rm_eval import EvalConfig, evaluate_rm_dir

    rep = evaluate_rm_dir(model_dir, pairs, EvalConfig(swap_test=False, n_boot=200), progress=False)
    assert rep.gold_accuracy is not None and rep.by_gold is not None and rep.gold is not None
    return {"acc": rep.gold_accuracy.value, "acc_near_ties": rep.by_gold[0].accuracy,
            "acc_clear": rep.by_gold[len(rep.by_gold) - 1].accuracy, "pearson": rep.gold.pearson,
            "skewness": rep.distribution.skewness, "acc_labels": rep.accuracy.value}


def run_unit(cfg: StudyConfig, noise: float, seed: int, todo: Sequence[str],
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and evaluate the variants `todo` on the world (noise, seed); returns one row per variant."""
    import torch

    from marginkit.data.world import WorldConfig, make_world
    from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

    size = STUDY_SIZES[cfg.size]
    unit = Path(cfg.out) / f"noise{noise:g}" / f"seed{seed}"
    world = make_world(WorldConfig(seed=seed, n_train=size.n_train, n_val=size.n_val, n_test=size.n_test, noise=noise))
    tokenizer = build_word_tokenizer(world.vocabulary())
    base = make_tiny_model_dir(unit / "base_model", tokenizer, hidden_size=size.hidden, num_layers=size.layers,
                               max_positions=64, seed=seed)
    variants = [STUDY_VARIANTS[n] for n in todo]
    reference = unit / "bt" / "model"
    ensemble = [reference] + [unit / f"bt-seed{k}" / "model" for k in range(1, cfg.ensemble_size)]
    need_ref = any(v.needs_reference or v.needs_ensemble for v in variants)
    if need_ref and not (reference / "config.json").exists():  # bt is always run first, but may have been done earlier
        _train_one(world, base, unit / "bt", size, cfg, seed, {"name": "none"})
    if any(v.needs_ensemble for v in variants):
        for k, path in enumerate(ensemble[1:], start=1):
            if not (path / "config.json").exists():
                _train_one(world, base, path.parent, size, cfg, seed + 1000 * k, {"name": "none"})
    rows = []
    for v in variants:
        margin = _fill(v.margin, str(reference), [str(p) for p in ensemble])
        torch.manual_seed(seed)
        model_dir, curve, seconds = _train_one(world, base, unit / v.name, size, cfg, seed, margin)
        row = {"noise": noise, "seed": seed, "variant": v.name, "family": v.family, "train_seconds": seconds,
               "val_acc": curve[-1]["val_gold_acc"] if curve else math.nan, "curve": curve,
               **_evaluate(model_dir, world.test)}
        log(f"noise {noise:g} seed {seed} {v.name:<16} test acc(true) {row['acc']:.3f}  val {row['val_acc']:.3f}  "
            f"({seconds:.1f} s)")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the whole study


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the study; returns the summary (also written to out/summary.json, out/study.md)."""
    if cfg.size not in STUDY_SIZES:
        raise ValueError(f"study size {cfg.size!r}; known: {sorted(STUDY_SIZES)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = cfg.chosen_variants()
    results = out / "results.jsonl"
    done = {(r["noise"], r["seed"], r["variant"]) for r in _read_rows(results)}
    units = []
    for noise in cfg.noises:
        for seed in cfg.seeds:
            # bt first in each unit: the reference for confidence variants
            todo = [v.name for v in variants if (noise, seed, v.name) not in done]
            if todo:
                units.append((noise, seed, todo))
    log(f"study: {len(variants)} variants x {len(cfg.seeds)} seeds x {len(cfg.noises)} noise levels; "
        f"{sum(len(t) for *_, t in units)} runs to do ({len(done)} done), {cfg.jobs} job(s), size {cfg.size}")
    (out / "study_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list) + "\n")
    started = time.perf_counter()
    fn = partial(run_unit, cfg, log=log) if cfg.jobs <= 1 else partial(run_unit, cfg)
    for (n, s, _), rows in run_units(fn, units, cfg.jobs, cfg.threads, log):
        _append(results, rows)
        if cfg.jobs > 1:
            log(f"noise {n:g} seed {s}: " + ", ".join(f"{r['variant']} {r['acc']:.3f}" for r in rows))
    rows = [r for r in _read_rows(results) if r["variant"] in {v.name for v in variants}
            and r["noise"] in set(cfg.noises) and r["seed"] in set(cfg.seeds)]
    summary = summarize(rows)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["config"] = asdict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    _plots(out, rows, summary)
    md = format_markdown(summary)
    (out / "study.md").write_text(md)
    log("\n" + md)
    return summary


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")  # numpy scalars as floats


# ----------------------------------------------------------------------------- summary


def steps_to_reach(curve: list[dict[str, Any]], target: float) -> float:
    """First evaluated step whose validation accuracy is >= target; nan when never reached."""
    for point in curve:
        if point["val_gold_acc"] >= target:
            return float(point["step"])
    return math.nan


METRICS = ("acc", "acc_near_ties", "acc_clear", "pearson", "skewness", "val_acc")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (noise, variant): mean and 95% interval over seeds of each metric, paired difference to BT,
    steps to BT's final validation accuracy, and per family the variant chosen on validation."""
    by = {(r["noise"], r["seed"], r["variant"]): r for r in rows}
    noises = sorted({r["noise"] for r in rows})
    order = list(dict.fromkeys(r["variant"] for r in rows))
    out: dict[str, Any] = {"noises": noises, "variants": order, "table": [], "chosen": {}}
    for noise in noises:
        seeds = sorted({r["seed"] for r in rows if r["noise"] == noise})
        for name in order:
            mine = [by[(noise, s, name)] for s in seeds if (noise, s, name) in by]
            if not mine:
                continue
            entry: dict[str, Any] = {"noise": noise, "variant": name, "family": mine[0]["family"], "n_seeds": len(mine)}
            for m in METRICS:
                entry[m] = t_interval([r[m] for r in mine])
            diffs = [r["acc"] - by[(noise, r["seed"], "bt")]["acc"] for r in mine if (noise, r["seed"], "bt") in by]
            entry["acc_vs_bt"] = t_interval(diffs)
            steps, reached = [], 0
            for r in mine:
                bt = by.get((noise, r["seed"], "bt"))
                if bt and bt["curve"]:
                    s = steps_to_reach(r["curve"], bt["curve"][-1]["val_gold_acc"])
                    reached += math.isfinite(s)
                    steps.append(s)
            finite = [s for s in steps if math.isfinite(s)]
            entry["steps_to_bt_final"] = float(np.median(finite)) if finite else math.nan
            entry["reached_bt_final"] = f"{reached}/{len(steps)}"
            entry["total_steps"] = mine[0]["curve"][-1]["step"] if mine[0]["curve"] else math.nan
            out["table"].append(entry)
        for family in dict.fromkeys(e["family"] for e in out["table"] if e["noise"] == noise):
            cands = [e for e in out["table"] if e["noise"] == noise and e["family"] == family]
            best = max(cands, key=lambda e: e["val_acc"][0])
            out["chosen"].setdefault(family, {})[str(noise)] = best["variant"]
    return out


def format_markdown(summary: dict[str, Any]) -> str:
    lines = []
    for noise in summary["noises"]:
        rows = [e for e in summary["table"] if e["noise"] == noise]
        n = max(e["n_seeds"] for e in rows)
        lines += [f"### Label noise {noise:g} ({n} seeds; mean [95% t-interval over seeds])", "",
                  "| variant | test acc (true pref.) | vs BT (paired) | near-ties | clear | r(Δ, true gap) | "
                  "skew(Δ) | val acc | steps to BT final (median) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in rows:
            chosen = summary["chosen"].get(e["family"], {}).get(str(noise)) == e["variant"]
            name = f"**{e['variant']}**" if chosen and e["family"] != "bt" else e["variant"]
            vs = "–" if e["variant"] == "bt" else format_interval(e["acc_vs_bt"])
            steps = e["steps_to_bt_final"]
            steps_s = (f"{steps:.0f} of {e['total_steps']:.0f} ({e['reached_bt_final']})"
                       if math.isfinite(steps) else f"never ({e['reached_bt_final']})")
            cells = [format_interval(e["acc"]), vs, format_interval(e["acc_near_ties"]),
                     format_interval(e["acc_clear"]), format_interval(e["pearson"]),
                     format_interval(e["skewness"], 2), format_interval(e["val_acc"]), steps_s]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Bold: the variant of each family with the best mean validation accuracy (the default we choose); "
                 "test numbers never choose.")
    return "\n".join(lines) + "\n"


def _plots(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = summary["noises"]
    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 0.35 * len(summary["variants"]) + 2),
                             squeeze=False)
    for ax, noise in zip(axes[0], noises):
        ents = [e for e in summary["table"] if e["noise"] == noise]
        y = np.arange(len(ents))
        means = [e["acc"][0] for e in ents]
        err = [[m - (e["acc"][1] if math.isfinite(e["acc"][1]) else m) for m, e in zip(means, ents)],
               [(e["acc"][2] if math.isfinite(e["acc"][2]) else m) - m for m, e in zip(means, ents)]]
        ax.errorbar(means, y, xerr=err, fmt="o", capsize=3)
        bt = next((e["acc"][0] for e in ents if e["variant"] == "bt"), None)
        if bt is not None:
            ax.axvline(bt, color="grey", ls="--", lw=1, label="BT mean")
        ax.set_yticks(y, [e["variant"] for e in ents])
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy vs true preference")
        ax.set_title(f"label noise {noise:g}")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "study_accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(noises), figsize=(6 * len(noises), 4), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for name in summary["variants"]:
            curves = [r["curve"] for r in rows if r["noise"] == noise and r["variant"] == name and r["curve"]]
            if not curves:
                continue
            k = min(len(c) for c in curves)
            steps = [p["step"] for p in curves[0][:k]]
            mean = np.mean([[p["val_gold_acc"] for p in c[:k]] for c in curves], axis=0)
            ax.plot(steps, mean, label=name, lw=2 if name == "bt" else 1, color="black" if name == "bt" else None)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("val accuracy vs true preference (mean over seeds)")
        ax.set_title(f"label noise {noise:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study_val_curves.png", dpi=110)
    plt.close(fig)
