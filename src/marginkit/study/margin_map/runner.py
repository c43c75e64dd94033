"""`marginkit study map`: the margin map on the gold-reward world, one row per (cell, seed, variant).

A cell is (RM class, label-noise model and level, training-set size). Per (RM class, noise, seed) the runner
builds the world once with the largest training set (smaller sizes take its first n pairs: nested learning
curves, paired across sizes), trains every variant from the same start on the same pairs, and writes one row
per variant to `<out>/results.jsonl` as each unit ends (rerunning resumes). Each row holds the test accuracy
against the *true* preference and its paired difference to the same unit's BT model, with the standard error
of that difference over the unit's test pairs, so the summary can draw intervals over seeds and over test
pairs from the rows alone. `--export` writes the rows to docs/study/margin_map.csv.gz for the docs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.study.margin_map.variants import VARIANTS, MapVariant
from marginkit.threads import THREADS_HELP, check_threads, run_units

__all__ = ["MapConfig", "parse_noise", "run_unit", "run_map", "QUICK", "ROW_FILE"]

ROW_FILE = "docs/study/margin_map.csv.gz"
NOISE_MODELS = ("bt", "thurstone", "flip", "annotators", "length_bias")


def parse_noise(spec: str) -> dict[str, Any]:
    """A noise spec ("bt:0.5", "thurstone:0.5", "flip:0.2", "annotators", "length_bias:0.1") as WorldConfig
    keyword arguments. The level is the temperature for bt and thurstone, ε for flip, λ for length_bias (at
    the default temperature 0.5); annotators use the default pool."""
    model, _, level = spec.partition(":")
    if model not in NOISE_MODELS:
        raise ValueError(f"noise {spec!r}: model must be one of {NOISE_MODELS}")
    kw: dict[str, Any] = {"label_noise": model}
    if level:
        value = float(level)
        key = {"bt": "noise", "thurstone": "noise", "flip": "flip_rate", "length_bias": "length_weight"}.get(model)
        if key is None:
            raise ValueError(f"noise {spec!r}: {model} takes no level")
        kw[key] = value
    return kw


@dataclass
class MapConfig:
    """`marginkit study map`: every variant x noise model x training-set size x RM class, over seeds."""

    out: str = field(default="runs/margin_map", metadata={"help": "Study folder (results.jsonl makes it resumable)."})
    quick: bool = field(default=False, metadata={"help": "The CI form: 2 sizes, 2 noise models, 3 seeds (~2 min)."})
    seeds: list[int] = field(default_factory=lambda: list(range(10)), metadata={"help": "World and training seeds."})
    sizes: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000, 8000], metadata={
        "help": "Training-set sizes of the linear RM (pairs)."})
    noises: list[str] = field(default_factory=lambda: ["bt:0.5", "bt:1.0", "thurstone:0.5", "flip:0.2", "annotators",
                                                       "length_bias:0.1"], metadata={
        "help": "Label-noise models of the linear RM's cells: bt:T, thurstone:T, flip:eps, annotators, length_bias:lambda."})
    variants: list[str] | None = field(default=None, metadata={"help": "Variant names (None: all; bt always runs)."})
    transformer_sizes: list[int] = field(default_factory=lambda: [2000], metadata={
        "help": "Training-set sizes of the transformer RM (empty: no transformer cells)."})
    transformer_noises: list[str] = field(default_factory=lambda: ["bt:0.5", "flip:0.2"], metadata={
        "help": "Noise models of the transformer RM's cells."})
    transformer_variants: list[str] = field(default_factory=lambda: [
        "clean", "soft", "bt", "oracle-1", "label-0.5", "conf-ref", "ot-2"], metadata={
        "help": "Variants of the transformer RM (each costs a full training)."})
    n_val: int = field(default=500, metadata={"help": "Validation pairs (checkpoint selection)."})
    n_test: int = field(default=1000, metadata={"help": "Test pairs (requests no training pair has)."})
    n_ood: int = field(default=1000, metadata={
        "help": "Out-of-distribution test pairs: test requests answered by a more skilled policy (skill 0.85)."})
    bon_prompts: int = field(default=200, metadata={"help": "Best-of-N test prompts (linear RM; 0: none)."})
    bon_n: int = field(default=16, metadata={"help": "Best-of-N samples per prompt."})
    linear_steps: int = field(default=400, metadata={"help": "Adam steps of the linear RM."})
    linear_batch: int = field(default=64, metadata={"help": "Pairs per linear-RM step."})
    linear_lr: float = field(default=0.05, metadata={"help": "Adam learning rate of the linear RM."})
    transformer_epochs: int = field(default=5, metadata={"help": "Epochs of the transformer RM."})
    transformer_batch: int = field(default=32, metadata={"help": "Pairs per transformer-RM step."})
    transformer_lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate of the transformer RM."})
    transformer_hidden: int = field(default=32, metadata={"help": "Hidden size of the transformer RM."})
    transformer_layers: int = field(default=1, metadata={"help": "Layers of the transformer RM."})
    n_evals: int = field(default=10, metadata={"help": "Validation checkpoints per linear fit (the best is tested)."})
    transformer_evals: int = field(default=5, metadata={
        "help": "Validation checkpoints per transformer fit (the best is tested)."})
    jobs: int = field(default=1, metadata={"help": "Units (RM class, noise, seed) run in parallel processes."})
    threads: int = field(default=1, metadata={"help": THREADS_HELP})
    export: str | None = field(default=None, metadata={
        "help": f"Also write every row to this gzipped CSV (the docs' rows live in {ROW_FILE})."})

    def __post_init__(self) -> None:
        check_threads(self.threads)
        if self.quick:
            self.seeds = self.seeds if self.seeds != list(range(10)) else [0, 1, 2]
            self.sizes, self.noises = [250, 1000], ["bt:0.5", "flip:0.2"]
            self.transformer_sizes, self.transformer_noises = [500], ["bt:0.5"]
            self.transformer_variants = ["clean", "soft", "bt", "oracle-1"]
            self.transformer_epochs, self.bon_prompts, self.n_val, self.n_test, self.n_ood = 3, 100, 300, 500, 500
        for spec in self.noises + self.transformer_noises:
            parse_noise(spec)
        unknown = [v for v in (self.variants or []) + self.transformer_variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown map variants {unknown}; known: {sorted(VARIANTS)}")
        if min(self.sizes + self.transformer_sizes, default=1) < 2:
            raise ValueError("sizes: every training-set size must be >= 2")

    def chosen(self, rm: str, noise: str) -> list[MapVariant]:
        names = self.transformer_variants if rm == "transformer" else (self.variants or list(VARIANTS))
        names = ["bt"] + [n for n in names if n != "bt"]  # bt first: the reference of conf-ref and of every diff
        if "conf-ref" in names and "bt" not in names:
            names.insert(0, "bt")
        out = [VARIANTS[n] for n in names]
        if not noise.startswith("annotators"):  # the confidence level exists only where annotators give one
            out = [v for v in out if not v.needs_confidence]
        return out

    def units(self) -> list[tuple[str, str, int]]:
        lin = [("linear", nz, s) for nz in self.noises for s in self.seeds] if self.sizes else []
        tr = [("transformer", nz, s) for nz in self.transformer_noises for s in self.seeds] if self.transformer_sizes else []
        return lin + tr


QUICK = MapConfig(quick=True)


# ----------------------------------------------------------------------------- metrics of one fit


def _correct(gaps: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the gap orders the pair as the true reward does, ½ on a zero gap, 0 otherwise;
    NaN on true ties (left out of every accuracy)."""
    out = np.where(gaps == 0, 0.5, ((gaps > 0) == (gold > 0)).astype(float))
    return np.where(gold == 0, np.nan, out)


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (over items) of a - b, NaN items left out."""
    d = (a - b)[np.isfinite(a - b)]
    if len(d) < 2:
        return math.nan, math.nan
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def _skew(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    sd = x.std()
    return float(((x - x.mean()) ** 3).mean() / sd**3) if len(x) > 2 and sd > 0 else math.nan


# ----------------------------------------------------------------------------- one unit


def _world(cfg: MapConfig, noise: str, seed: int, n_train: int) -> tuple[Any, list[Any]]:
    from marginkit.data.world import WorldConfig, make_world

    kw = parse_noise(noise)
    world = make_world(WorldConfig(seed=seed, n_train=n_train, n_val=cfg.n_val, n_test=cfg.n_test, **kw))
    ood = make_world(WorldConfig(seed=seed, n_train=1, n_val=0, n_test=cfg.n_ood, policy_skill=0.85, **kw)).test \
        if cfg.n_ood else []
    return world, ood


def _bon_candidates(cfg: MapConfig, world: Any, seed: int) -> tuple[list[str], list[str], np.ndarray] | None:
    if not cfg.bon_prompts:
        return None
    prompts = world.sample_prompts(cfg.bon_prompts, seed=seed + 7919, split="test")
    samples = world.policy.sample(prompts, n=cfg.bon_n, seed=seed)  # [P][N] texts
    flat_p = [p for p, row in zip(prompts, samples, strict=True) for _ in row]
    flat_r = [r for row in samples for r in row]
    return flat_p, flat_r, world.true_rewards(flat_p, flat_r).reshape(len(prompts), cfg.bon_n)


def run_unit(cfg: MapConfig, rm: str, noise: str, seed: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every size x variant of one (RM class, noise, seed); one row each."""
    import tempfile

    from marginkit.study.margin_map.fit import clean_pairs, fit_linear, fit_transformer, split_tensors

    sizes = sorted(cfg.transformer_sizes if rm == "transformer" else cfg.sizes)
    world, ood = _world(cfg, noise, seed, max(sizes))
    linear = rm == "linear"
    val, test = split_tensors(world.val, linear), split_tensors(world.test, linear)
    ood_t = split_tensors(ood, linear) if ood else None
    clean_val = split_tensors(clean_pairs(world.val), linear)
    bon = _bon_candidates(cfg, world, seed) if linear else None
    tmp = tempfile.TemporaryDirectory(prefix="margin_map_")
    base = None
    if not linear:
        from marginkit.data.ledger import Ledger
        from marginkit.data.tokenize import TokenizeConfig, encode_pairs
        from marginkit.models.tiny import build_word_tokenizer, make_tiny_model_dir

        tokenizer = build_word_tokenizer(world.vocabulary())
        base = make_tiny_model_dir(Path(tmp.name) / "base", tokenizer, hidden_size=cfg.transformer_hidden,
                                   num_layers=cfg.transformer_layers, max_positions=64, seed=seed)
        tok_cfg = TokenizeConfig(max_length=64)

        def encode(split: Any) -> Any:
            split.encoded = encode_pairs(split.pairs, tokenizer, tok_cfg, Ledger())
            if len(split.encoded) != len(split.pairs):
                raise RuntimeError("margin map: the tokenizer dropped world pairs")  # never: max_length 64 fits all
            return split

        val, test, clean_val = encode(val), encode(test), encode(clean_val)
        ood_t = encode(ood_t) if ood_t is not None else None
    gold_test = test.labels["gold_gap"].double().numpy()
    abs_gold = np.abs(gold_test)
    nonzero = abs_gold[gold_test != 0]
    q1, q3 = (np.quantile(nonzero, [0.25, 0.75]) if len(nonzero) else (math.nan, math.nan))
    rows = []
    for n in sizes:
        train_pairs = world.train[:n]
        splits = {"observed": split_tensors(train_pairs, linear), "clean": split_tensors(clean_pairs(train_pairs), linear)}
        if not linear:
            splits = {k: encode(v) for k, v in splits.items()}
        bt_ref: dict[str, Any] = {}
        for variant in cfg.chosen(rm, noise):
            train = splits[variant.labels]
            vsplit = clean_val if variant.labels == "clean" else val
            ref = bt_ref.get("train_gaps") if variant.needs_reference else None
            t0 = time.perf_counter()
            if linear:
                fit = fit_linear(train, vsplit, variant, seed, cfg.linear_steps, cfg.linear_batch, cfg.linear_lr,
                                 cfg.n_evals, ref)
            else:
                fit = fit_transformer(base, train, vsplit, variant, seed, cfg.transformer_epochs,
                                      cfg.transformer_batch, cfg.transformer_lr, cfg.transformer_evals, ref)
            seconds = time.perf_counter() - t0
            gaps = fit.gaps(test)
            corr = _correct(gaps, gold_test)
            row: dict[str, Any] = {
                "rm": rm, "noise": noise, "n": n, "seed": seed, "variant": variant.name, "family": variant.family,
                "acc": float(np.nanmean(corr)),
                "acc_near": float(np.nanmean(corr[(abs_gold <= q1) & (gold_test != 0)])),
                "acc_clear": float(np.nanmean(corr[abs_gold >= q3])),
                "pearson": float(np.corrcoef(gaps, gold_test)[0, 1]) if np.std(gaps) > 0 else math.nan,
                "skew": _skew(gaps), "val_acc": max(a for _, a in fit.curve), "best_step": fit.best_step,
                "seconds": seconds,
            }
            extra: dict[str, np.ndarray] = {"acc": corr}
            if ood_t is not None:
                corr_ood = _correct(fit.gaps(ood_t), ood_t.labels["gold_gap"].double().numpy())
                row["acc_ood"] = float(np.nanmean(corr_ood))
                extra["ood"] = corr_ood
            if bon is not None and fit.scorer is not None:
                flat_p, flat_r, gold = bon
                scores = fit.scorer(flat_p, flat_r).reshape(gold.shape)
                picked = gold[np.arange(len(gold)), scores.argmax(axis=1)]  # [P] true reward of each pick
                row["bon"] = float(picked.mean())
                extra["bon"] = picked
            if variant.name == "bt":
                bt_ref.update(extra=extra, curve=fit.curve, best_val=row["val_acc"], train_gaps=fit.gaps(splits["observed"]))
            else:
                for key, values in extra.items():
                    row[f"d_{key}"], row[f"se_{key}"] = _paired(values, bt_ref["extra"][key])
                reached = [s for s, a in fit.curve if a >= bt_ref["best_val"]]
                row["steps_to_bt"] = reached[0] if reached and variant.labels == "observed" else math.nan
            if variant.name == "bt":
                row["steps_to_bt"] = next(s for s, a in fit.curve if a >= row["val_acc"])
            rows.append(row)
            vs_bt = "" if variant.name == "bt" else f"(vs bt {row['d_acc']:+.3f}) "
            log(f"{rm} {noise} n={n} seed {seed} {variant.name:<14} acc {row['acc']:.3f} {vs_bt}({seconds:.1f} s)")
        del splits
    tmp.cleanup()
    return rows


def _silent(message: str) -> None:
    """The log of a unit in a worker process (its rows are reported when it ends)."""


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_map(cfg: MapConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume) the map; returns every row of the configured units (also in <out>/results.jsonl)."""
    from marginkit.study.render import write_rows

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["rm"], r["noise"], r["seed"]) for r in read_results(results)}
    todo = [u for u in cfg.units() if u not in done]
    log(f"margin map: {len(cfg.units())} units (RM class x noise x seed), {len(todo)} to run, {cfg.jobs} job(s)")
    (out / "map_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    started = time.perf_counter()
    fn = partial(run_unit, cfg, log=log if cfg.jobs <= 1 else _silent)
    for k, ((rm, noise, seed), rows) in enumerate(run_units(fn, todo, cfg.jobs, cfg.threads, log), 1):
        _append(results, rows)
        log(f"[{k}/{len(todo)}] {rm} {noise} seed {seed}: {len(rows)} rows ({time.perf_counter() - started:.0f} s)")
    wanted = set(cfg.units())
    rows = [r for r in read_results(results) if (r["rm"], r["noise"], r["seed"]) in wanted]
    log(f"margin map: {len(rows)} rows, {time.perf_counter() - started:.0f} s")
    if cfg.export:
        write_rows(cfg.export, rows)
        log(f"wrote {cfg.export}")
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")
