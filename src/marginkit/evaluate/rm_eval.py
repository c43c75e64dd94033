"""`eval-rm`: score held-out pairs with a trained RM exactly as training did, and report what matters.

Accuracy with a bootstrap interval; accuracy by bucket of |Δ| and of the label or true margin;
the gap distribution; calibration of σ(Δ); confound controls (the "longer wins" baseline, the
length-reward correlation, the swap test); agreement with gold rewards when the data has them;
and the k worst-scored pairs, for finding bad data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marginkit.data.ledger import Ledger
from marginkit.data.schema import Pair, prompt_text
from marginkit.data.tokenize import TokenizeConfig, encode_pairs
from marginkit.evaluate import metrics as M
from marginkit.evaluate.accuracy import gold_oriented_gap, pairwise_accuracy
from marginkit.evaluate.scorer import score_encoded, swap_encoded

__all__ = ["EvalConfig", "RMEvalReport", "reward_metrics", "evaluate_pairs", "evaluate_rm_dir", "format_report",
           "report_name", "write_report", "write_rewards"]


@dataclass
class EvalConfig:
    """One `marginkit eval-rm` run; the library functions read only the scoring fields (batch_size on)."""

    model: str = field(default="", metadata={"help": "Folder of a trained RM (or any HF sequence-classification RM).",
                                             "required": True})
    data: str = field(default="", metadata={"help": "Pairs file (JSONL/JSON/Parquet/HF dataset folder).",
                                            "required": True})
    format: str = field(default="auto", metadata={"help": "Input format (see docs/data.md); auto detects it."})
    on_invalid: Literal["error", "skip"] = field(default="error", metadata={
        "help": "Unusable pairs: error (strict) or skip (counted in the ledger)."})
    out: str | None = field(default=None, metadata={"help": "Output folder (None: MODEL/eval)."})
    batch_size: int = field(default=32, metadata={"help": "Pairs scored per forward."})
    n_buckets: int = field(default=4, metadata={"help": "Quantile buckets for accuracy by margin."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for intervals."})
    worst_k: int = field(default=10, metadata={"help": "Worst-scored pairs listed.", "flag": "--worst"})
    swap_test: bool = field(default=True, metadata={"help": "Rescore with chosen/rejected swapped."})


_PER_PAIR = ("gaps", "chosen_rewards", "rejected_rewards", "pairs")  # written as JSONL, not in the summary


@dataclass
class RMEvalReport:
    n_pairs: int
    accuracy: M.Estimate
    by_abs_gap: M.BucketedAccuracy
    by_label: M.BucketedAccuracy | None
    by_gold: M.BucketedAccuracy | None  # accuracy vs the true preference by |true gap|, true ties excluded
    gold: M.GoldAgreement | None
    gold_accuracy: M.Estimate | None  # accuracy against the true preference (sign of the gold gap)
    distribution: M.Distribution
    calibration: M.Calibration
    length: M.LengthBaseline
    swap: M.SwapTest | None
    worst: list[dict[str, Any]]
    ledger: dict[str, Any]
    gaps: np.ndarray = field(repr=False)
    by_section: dict[str, dict[str, Any]] | None = None  # rows with a "section" field: accuracy and n per section
    chosen_rewards: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # [B] per scored pair
    rejected_rewards: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # [B]
    pairs: list[dict[str, Any]] = field(default_factory=list, repr=False)  # [B] id, index, section, label margin

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k in _PER_PAIR:
                continue
            out[k] = v.to_dict() if hasattr(v, "to_dict") else v
        return out


def reward_metrics(chosen_rewards: np.ndarray, rejected_rewards: np.ndarray, gold_gap: np.ndarray | None = None,
                   prefix: str = "") -> dict[str, float]:
    """The evaluation metrics RM and DPO runs log under TRL's names, over scored pairs. All inputs: [B], B >= 1.

    loss = mean -log σ(Δ) (BT without margin: comparable across strategies and losses); `rewards/accuracies`
    = pairwise accuracy with ties 1/2 (evaluate/accuracy.py); `rewards/margins` = mean Δ; `rewards/chosen`,
    `rewards/rejected` = mean rewards. Where some gold gaps are known and non-zero (gold-reward worlds),
    `rewards/gold_accuracies` = the same rule on Δ oriented by the true preference (true ties left out).
    `prefix` is prepended to every key (eval_ during training).
    """
    c, r = np.asarray(chosen_rewards, dtype=np.float64), np.asarray(rejected_rewards, dtype=np.float64)
    gap = c - r  # [B]
    out = {"loss": float(np.logaddexp(0.0, -gap).mean()), "rewards/accuracies": pairwise_accuracy(gap),
           "rewards/margins": float(gap.mean()), "rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean())}
    oriented = gold_oriented_gap(gap, gold_gap) if gold_gap is not None else np.zeros(0)
    if oriented.size:
        out["rewards/gold_accuracies"] = pairwise_accuracy(oriented)
    return {prefix + k: v for k, v in out.items()}


def evaluate_pairs(model: Any, tokenizer: Any, pairs: list[Pair], tokenize: TokenizeConfig, padding_side: str,
                   encoder: bool, cfg: EvalConfig | None = None, progress: bool = False) -> RMEvalReport:
    """Score `pairs` with (model, tokenizer) and build the report."""
    cfg = cfg or EvalConfig()
    ledger = Ledger()
    ledger.read(len(pairs))
    encoded = encode_pairs(pairs, tokenizer, tokenize, ledger, encoder)
    ledger.keep(len(encoded))
    pad = tokenizer.pad_token_id
    c, r = score_encoded(model, encoded, pad, padding_side, cfg.batch_size, progress=progress)
    gap = c - r
    kept = [pairs[e.index] for e in encoded]
    label = np.array([p.score_gap if np.isfinite(p.score_gap) else (p.margin if p.margin is not None else np.nan)
                      for p in kept], dtype=float)
    gold_gap = np.array([p.gold_gap for p in kept], dtype=float)
    has_gold = bool(np.isfinite(gold_gap).all()) and len(kept) > 0
    swap = None
    if cfg.swap_test:
        sc, sr = score_encoded(model, swap_encoded(encoded), pad, padding_side, cfg.batch_size, progress=progress,
                               desc="swap test")
        swap = M.swap_test(gap, sc - sr)
    # Length of the untruncated response text in characters: token counts after truncation tie every pair
    # cut to max_length (issue 14: 66.5% by tokens where "longer wins" by characters scores 71.6%).
    len_c = np.array([len(p.chosen) for p in kept], dtype=float)
    len_r = np.array([len(p.rejected) for p in kept], dtype=float)
    sections = [_plain(p.metadata.get("section")) for p in kept]
    worst = [{"id": kept[i].id, "index": int(encoded[i].index), "reward_gap": float(gap[i]),
              "prompt": prompt_text(kept[i].prompt)[-200:], "chosen": kept[i].chosen[:200],
              "rejected": kept[i].rejected[:200]} for i in M.worst_pairs(gap, min(cfg.worst_k, len(gap)))]
    true_pref = np.where(gold_gap > 0, 1.0, 0.0) if has_gold else None
    oriented = gold_oriented_gap(gap, gold_gap) if has_gold else np.zeros(0)  # [#pairs with a true preference]
    return RMEvalReport(
        n_pairs=len(encoded),
        accuracy=M.accuracy_with_ci(gap, n_boot=cfg.n_boot),
        by_abs_gap=M.accuracy_by_bucket(gap, np.abs(gap), cfg.n_buckets),
        by_label=M.accuracy_by_bucket(gap, np.abs(label), cfg.n_buckets) if np.isfinite(label).any() else None,
        by_gold=M.accuracy_by_bucket(oriented, np.abs(gold_gap[gold_gap != 0]), cfg.n_buckets) if oriented.size else None,
        gold=M.gold_agreement(gap, gold_gap) if has_gold else None,
        gold_accuracy=M.accuracy_with_ci(oriented, n_boot=cfg.n_boot) if oriented.size else None,
        distribution=M.gap_distribution(gap),
        calibration=M.calibration(gap, true_pref) if true_pref is not None else M.calibration(gap),
        length=M.length_baseline(len_c, len_r, c, r, unit="characters"),
        swap=swap,
        worst=worst,
        ledger=ledger.to_dict(),
        gaps=gap,
        by_section=_by_section(gap, sections, cfg.n_boot),
        chosen_rewards=c,
        rejected_rewards=r,
        pairs=[{"id": p.id, "index": int(e.index), "section": sec, "label_margin": float(m)}
               for p, e, sec, m in zip(kept, encoded, sections, label)],
    )


def _plain(value: Any) -> str | int | float | bool | None:
    """A section value as JSON writes it (numpy scalars and anything else become their string)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _by_section(gap: np.ndarray, sections: list[Any], n_boot: int) -> dict[str, dict[str, Any]] | None:
    """Accuracy with its bootstrap interval, mean Δ and n per value of the rows' "section" field (None if no
    row has one; rows without one go under "(none)")."""
    if all(s is None for s in sections):
        return None
    names = np.array(["(none)" if s is None else str(s) for s in sections])
    out = {}
    for name in sorted(set(names)):
        g = gap[names == name]  # [n in section]
        out[name] = {"n": int(g.size), "accuracy": M.accuracy_with_ci(g, n_boot=n_boot).to_dict(),
                     "mean_gap": float(g.mean())}
    return out


def evaluate_rm_dir(model_dir: str | Path, pairs: list[Pair], cfg: EvalConfig | None = None,
                    tokenize: TokenizeConfig | None = None, progress: bool = True) -> RMEvalReport:
    """Load a saved RM folder (with the scorer settings it was trained with) and evaluate `pairs`."""
    from marginkit.configlib import from_dict
    from marginkit.models.reward import ModelConfig, is_encoder, load_reward_model, load_scorer_settings

    settings = load_scorer_settings(model_dir)
    model, tokenizer = load_reward_model(ModelConfig(name_or_path=str(model_dir), head_init="keep"))
    tok_cfg = tokenize or from_dict(TokenizeConfig, settings.get("tokenize", {}))
    side = settings.get("padding_side", "right")
    return evaluate_pairs(model, tokenizer, pairs, tok_cfg, side, is_encoder(model), cfg, progress)


def _bucket_rows(name: str, b: M.BucketedAccuracy | None) -> list[str]:
    if b is None:
        return []
    return [f"  {name} [{x.lo:.3g}, {x.hi:.3g}]: acc {x.accuracy:.3f} (n={x.n})" for x in b]


def format_report(rep: RMEvalReport) -> str:
    """A console table of the report."""
    a = rep.accuracy
    lines = [f"pairs scored: {rep.n_pairs}",
             f"accuracy (labels): {a.value:.4f}  [{a.low:.4f}, {a.high:.4f}] {int(a.level * 100)}% bootstrap"]
    if rep.gold_accuracy is not None and rep.gold is not None:
        g = rep.gold_accuracy
        lines.append(f"accuracy (true preference): {g.value:.4f}  [{g.low:.4f}, {g.high:.4f}]; "
                     f"corr(Δ, true gap): pearson {rep.gold.pearson:.3f}, spearman {rep.gold.spearman:.3f}")
    d = rep.distribution
    lines.append(f"gap Δ: mean {d.mean:.3f}, std {d.std:.3f}, skewness {d.skewness:.3f}, median {d.p50:.3f}")
    lines.append(f"calibration of σ(Δ): ECE {rep.calibration.ece:.4f}, Brier {rep.calibration.brier:.4f}"
                 + (" (symmetrised)" if rep.calibration.symmetrised else " (vs true preference)"))
    ln = rep.length
    corr = "n/a" if ln.corr_length_reward is None else f"{ln.corr_length_reward:.3f}"
    lines.append(f"length baseline (longer wins, length in {ln.unit} of the untruncated responses): "
                 f"{ln.accuracy_longer_wins:.4f}; corr(length, reward) {corr}")
    if rep.swap is not None:
        lines.append(f"swap test: {'passed' if rep.swap.passed else 'FAILED'} (max |Δ + Δ_swapped| = "
                     f"{rep.swap.max_abs_sum:.2e})")
    lines.append("accuracy by bucket:")
    lines += _bucket_rows("|Δ|", rep.by_abs_gap) + _bucket_rows("|label|", rep.by_label)
    lines += _bucket_rows("|true gap|", rep.by_gold)
    if rep.by_section:
        lines.append("accuracy by section:")
        lines += [f"  {name}: acc {v['accuracy']['value']:.3f} [{v['accuracy']['low']:.3f}, {v['accuracy']['high']:.3f}]"
                  f", mean Δ {v['mean_gap']:+.3f} (n={v['n']})" for name, v in rep.by_section.items()]
    lines.append(f"worst {len(rep.worst)} pairs (most negative Δ):")
    lines += [f"  {w['reward_gap']:+.3f}  {w['id'] or '#' + str(w['index'])}: chosen {w['chosen'][:60]!r} | "
              f"rejected {w['rejected'][:60]!r}" for w in rep.worst]
    return "\n".join(lines)


def report_name(data: str | Path) -> str:
    """The output name for a data file: its whole file name, extension included, so X.jsonl and X.parquet in
    one folder get separate reports (X.jsonl.json, X.parquet.json)."""
    return Path(data).name


def write_rewards(rep: RMEvalReport, path: str | Path) -> Path:
    """One JSON line per scored pair: id (None when the data has none), index (row in the loaded pairs),
    chosen and rejected rewards, gap = chosen - rejected, and section / label_margin when the pair has them."""
    lines = []
    for info, c, r in zip(rep.pairs, rep.chosen_rewards, rep.rejected_rewards):
        row = {"id": info["id"], "index": info["index"], "chosen_reward": float(c), "rejected_reward": float(r),
               "gap": float(c - r)}
        if info["section"] is not None:
            row["section"] = info["section"]
        if np.isfinite(info["label_margin"]):
            row["label_margin"] = info["label_margin"]
        lines.append(json.dumps(row) + "\n")
    Path(path).write_text("".join(lines))
    return Path(path)


def write_report(rep: RMEvalReport, out_dir: str | Path, name: str = "eval") -> Path:
    """Write <name>.json (the summary), <name>.rewards.jsonl (every pair's rewards, `write_rewards`), a
    histogram and a reliability plot to out_dir."""
    from marginkit.report.plots import plot_margin_histograms, plot_reliability

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    write_rewards(rep, out / f"{name}.rewards.jsonl")
    plot_margin_histograms({name: rep.gaps}, out / f"{name}_gap_hist.png")
    plot_reliability({name: rep.calibration}, out / f"{name}_reliability.png")
    return out / f"{name}.json"
