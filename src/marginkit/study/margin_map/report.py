"""The margin map's tables, claims and plots, computed from the rows alone (docs/study/margin_map.csv.gz).

Per (RM class, noise model) table, every non-BT variant at every size is one comparison against BT:
the paired difference in test accuracy against the true preference (percentage points), with

- a 95% Student-t interval over seeds (each seed: its own world, test pairs, initialisation and order),
- a 95% interval over test pairs (the per-seed standard errors of the paired difference, pooled:
  evaluate.stats.pooled_se_interval; training runs held fixed),
- the seed t-test's p-value, Holm-adjusted across the table's comparisons, and the interval at the level
  Holm's procedure tests that comparison at (evaluate.stats.holm_levels).

`render_docs` fills the generated blocks of docs/study_margins.md and draws docs/study/margin_map_*.png.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.evaluate.stats import (
    holm,
    holm_levels,
    min_detectable_effect,
    pooled_se_interval,
    t_interval,
    t_test_p,
)
from marginkit.study.margin_map.variants import FAMILY_ORDER, VARIANTS

__all__ = ["Comparison", "compare", "render_docs", "ROWS", "DOC"]

ROWS = "study/margin_map.csv.gz"  # relative to docs/
DOC = "study_margins.md"
NOISE_LABEL = {
    "bt:0.5": "bt, T = 0.5 (default)", "bt:1.0": "bt, T = 1.0", "thurstone:0.5": "thurstone, T = 0.5",
    "flip:0.2": "flip, ε = 0.2", "annotators": "annotators (s = 0.1, 0.5, 2.0)",
    "length_bias:0.1": "length_bias, λ = 0.1",
}
CLAIM_TARGET_000 = 6.31  # points: seed 000's headline accuracy gain


def _key(r: dict[str, Any]) -> tuple[str, str]:
    return r["rm"], r["noise"]


def _order(variants: Sequence[str]) -> list[str]:
    known = list(VARIANTS)
    return sorted(set(variants), key=lambda v: (known.index(v) if v in known else len(known), v))


class Comparison(dict):
    """One (rm, noise, n, variant) vs BT: d (points), seed CI, pair CI, p, p_holm, holm CI, mde."""


def compare(rows: Sequence[dict[str, Any]], metric: str = "acc") -> list[Comparison]:
    """Every comparison of every table (grouped by rm, noise), Holm-adjusted within its table.

    metric "acc", "ood" or "bon": the paired difference d_<metric> and its per-seed standard error se_<metric>
    from the rows (accuracies in points, Best-of-N in true-reward units)."""
    scale = 1.0 if metric == "bon" else 100.0
    value = {"acc": "acc", "ood": "acc_ood", "bon": "bon"}[metric]
    cells: dict[tuple[str, str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["variant"] != "bt" and r.get(f"d_{metric}") is not None and math.isfinite(r[f"d_{metric}"]):
            cells[(r["rm"], r["noise"], r["n"], r["variant"])].append(r)
    by_table: dict[tuple[str, str], list[Comparison]] = defaultdict(list)
    for (rm, noise, n, variant), rs in cells.items():
        d = [scale * r[f"d_{metric}"] for r in rs]
        se = [scale * r[f"se_{metric}"] for r in rs]
        mean, lo, hi = t_interval(d)
        _, plo, phi = pooled_se_interval(d, se)
        val = [r["val_acc"] for r in rs]
        by_table[(rm, noise)].append(Comparison(
            rm=rm, noise=noise, n=n, variant=variant, family=VARIANTS[variant].family if variant in VARIANTS else "?",
            d=mean, lo=lo, hi=hi, pair_lo=plo, pair_hi=phi, p=t_test_p(d), seeds=len(d),
            sd=float(np.std(d, ddof=1)) if len(d) > 1 else math.nan, val=float(np.mean(val)),
            value=float(np.mean([r[value] for r in rs])) * (scale if metric != "bon" else 1.0)))
    out: list[Comparison] = []
    for comps in by_table.values():
        adj = holm([c["p"] for c in comps])
        levels = holm_levels([c["p"] for c in comps])
        m = len(comps)
        for c, pa, level in zip(comps, adj, levels, strict=True):
            c["p_holm"], c["holm_level"], c["m"] = pa, level, m
            seeds_d = [scale * r[f"d_{metric}"] for r in cells[(c["rm"], c["noise"], c["n"], c["variant"])]]
            _, hlo, hhi = t_interval(seeds_d, level) if math.isfinite(level) else (math.nan,) * 3
            c["holm_lo"], c["holm_hi"] = hlo, hhi
            c["mde"] = min_detectable_effect(c["sd"], c["seeds"], m)
        out += comps
    return out


def _pm(x: float, digits: int = 1) -> str:
    return "–" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _ci(lo: float, hi: float, digits: int = 1) -> str:
    return "" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _best_by_val(comps: Sequence[Comparison]) -> set[tuple[str, str, int, str]]:
    """Per (rm, noise, n, family) the variant with the best mean validation accuracy (never test)."""
    best: dict[tuple[str, str, int, str], Comparison] = {}
    for c in comps:
        if c["family"] == "control":
            continue
        k = (c["rm"], c["noise"], c["n"], c["family"])
        if k not in best or c["val"] > best[k]["val"]:
            best[k] = c
    return {(c["rm"], c["noise"], c["n"], c["variant"]) for c in best.values()}


def _tables(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in rows:
        if _key(r) not in seen:
            seen.append(_key(r))
    noise_order = list(NOISE_LABEL)
    return sorted(seen, key=lambda k: (k[0] != "linear", noise_order.index(k[1]) if k[1] in noise_order else 99))


def _mean(rows: Sequence[dict[str, Any]], **where: Any) -> tuple[float, float, float]:
    vals = [r["acc"] * 100 for r in rows if all(r.get(k) == v for k, v in where.items())]
    return t_interval(vals)


# ----------------------------------------------------------------------------- blocks


def controls_block(rows: Sequence[dict[str, Any]]) -> str:
    """Test accuracy (%) of the controls per table and size, and whether the positive controls pass."""
    lines = ["| RM | labels | n | BT | noise-free | soft-label ceiling | oracle margin | soft - BT |",
             "|---|---|---|---|---|---|---|---|"]
    checks = []
    for rm, noise in _tables(rows):
        rs = [r for r in rows if _key(r) == (rm, noise)]
        for n in sorted({r["n"] for r in rs}):
            cell = {v: _mean(rs, n=n, variant=v) for v in ("bt", "clean", "soft", "oracle-1")}
            soft_gap = t_interval([100 * r["d_acc"] for r in rs if r["n"] == n and r["variant"] == "soft"])
            lines.append(f"| {rm} | {NOISE_LABEL.get(noise, noise)} | {n} | "
                         + " | ".join(f"{cell[v][0]:.1f}" if math.isfinite(cell[v][0]) else "–"
                                      for v in ("bt", "clean", "soft", "oracle-1"))
                         + f" | {_pm(soft_gap[0])} {_ci(soft_gap[1], soft_gap[2])} |")
            checks.append((rm, noise, n, cell["clean"][0], soft_gap))
    lin = [c for c in checks if c[0] == "linear" and c[1] == "bt:0.5"]
    clean_ok = [n for _, _, n, acc, _ in lin if acc >= 90.0]
    soft_ok = [n for _, _, n, _, g in lin if n <= 1000 and math.isfinite(g[1]) and g[1] >= 3.0]
    verdict = [
        "",
        f"Issue 15's positive controls (linear RM, default noise bt T = 0.5): noise-free BT reaches >= 90% at n = "
        f"{', '.join(map(str, clean_ok)) or 'none'} "
        f"({'PASS' if clean_ok else 'FAIL'}); the soft-label ceiling beats BT by >= 3 points (lower end of the seed "
        f"interval) at n <= 1,000 for n = {', '.join(map(str, soft_ok)) or 'none'} ({'PASS' if soft_ok else 'FAIL'}).",
        "",
        "Per table, the positive control is the noise-free labels beating BT after Holm's correction (the test bed "
        "can see a better estimate of the reward) at some size:",
        "",
    ]
    for rm, noise in _tables(rows):
        status = control_status(rows, rm, noise)
        verdict.append(f"- {rm} RM, {NOISE_LABEL.get(noise, noise)}: "
                       + (f"passes at n = {', '.join(map(str, status))}" if status else
                          "**fails: this table draws no conclusion about margins**"))
    return "\n".join(lines + verdict)


def control_status(rows: Sequence[dict[str, Any]], rm: str, noise: str) -> list[int]:
    """The sizes at which the noise-free control beats BT significantly (Holm within its table)."""
    return sorted(c["n"] for c in compare([r for r in rows if _key(r) == (rm, noise)])
                  if c["variant"] == "clean" and c["d"] > 0 and c["p_holm"] < 0.05)


def map_block(rows: Sequence[dict[str, Any]]) -> str:
    """Per table: rows = variants, columns = sizes; each cell the paired accuracy difference to BT in points
    with its 95% seed interval; * = Holm-adjusted p < 0.05 within the table; bold = the family's best on
    validation."""
    comps = compare(rows)
    best = _best_by_val(comps)
    out = []
    for rm, noise in _tables(rows):
        cs = [c for c in comps if (c["rm"], c["noise"]) == (rm, noise)]
        if not cs:
            continue
        sizes = sorted({c["n"] for c in cs})
        seeds = max(c["seeds"] for c in cs)
        bt = {n: _mean([r for r in rows if _key(r) == (rm, noise)], n=n, variant="bt")[0] for n in sizes}
        out += [f"**{rm} RM, labels {NOISE_LABEL.get(noise, noise)}** ({seeds} seeds, {cs[0]['m']} comparisons "
                "Holm-corrected together)", "",
                "| variant | " + " | ".join(f"n = {n}" for n in sizes) + " |",
                "|---|" + "---|" * len(sizes),
                "| bt (accuracy, %) | " + " | ".join(f"{bt[n]:.1f}" for n in sizes) + " |"]
        if not control_status(rows, rm, noise):
            out[-5] += " **Positive control fails (noise-free labels do not beat BT): no conclusion from this table.**"
        for v in _order([c["variant"] for c in cs]):
            cells = []
            for n in sizes:
                c = next((c for c in cs if c["variant"] == v and c["n"] == n), None)
                if c is None:
                    cells.append("")
                    continue
                text = f"{_pm(c['d'])} {_ci(c['lo'], c['hi'])}{'*' if c['p_holm'] < 0.05 else ''}"
                cells.append(f"**{text}**" if (rm, noise, n, v) in best else text)
            out.append(f"| {v} | " + " | ".join(cells) + " |")
        mdes = [c["mde"] for c in cs if math.isfinite(c["mde"])]
        out += ["", f"Smallest effect this table detects with 80% power at its Holm first step (median over its "
                f"comparisons): {np.median(mdes):.1f} points." if mdes else "", ""]
    return "\n".join(out).rstrip() + "\n"


def detail_block(rows: Sequence[dict[str, Any]]) -> str:
    """Every comparison with both raw intervals, p, Holm-adjusted p and the Holm-level interval."""
    comps = compare(rows)
    out = ["<details><summary>Every comparison: both raw intervals next to the Holm correction</summary>", "",
           "| RM | labels | n | variant | acc (%) | vs BT (points) | 95% over seeds | 95% over test pairs | p | "
           "p (Holm) | Holm-level interval |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = _tables(rows)
    comps.sort(key=lambda c: (order.index((c["rm"], c["noise"])), c["n"], _order(list(VARIANTS)).index(c["variant"])
                              if c["variant"] in VARIANTS else 99))
    for c in comps:
        out.append(f"| {c['rm']} | {c['noise']} | {c['n']} | {c['variant']} | {c['value']:.1f} | {_pm(c['d'], 2)} | "
                   f"{_ci(c['lo'], c['hi'], 2)} | {_ci(c['pair_lo'], c['pair_hi'], 2)} | {_p(c['p'])} | "
                   f"{_p(c['p_holm'])} | {_ci(c['holm_lo'], c['holm_hi'], 2)} ({100 * c['holm_level']:.2f}%) |")
    out += ["", "</details>"]
    return "\n".join(out)


def _paired_metric(rows: Sequence[dict[str, Any]], variant: str, metric: str) -> dict[tuple[str, str, int], list[float]]:
    """Per cell, the per-seed difference variant - bt of a row metric (pairs matched by rm, noise, n, seed)."""
    bt = {(r["rm"], r["noise"], r["n"], r["seed"]): r for r in rows if r["variant"] == "bt"}
    out: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        b = bt.get((r["rm"], r["noise"], r["n"], r["seed"]))
        if r["variant"] == variant and b is not None and r.get(metric) is not None and b.get(metric) is not None:
            if math.isfinite(r[metric]) and math.isfinite(b[metric]):
                out[(r["rm"], r["noise"], r["n"])].append(r[metric] - b[metric])
    return out


def _claim_line(comps: Sequence[Comparison], variants: Sequence[str], unit: str = "points", digits: int = 1) -> str:
    cs = [c for c in comps if c["variant"] in variants]
    if not cs:
        return "not run"
    sig = [c for c in cs if c["p_holm"] < 0.05 and c["d"] > 0]
    neg = [c for c in cs if c["p_holm"] < 0.05 and c["d"] < 0]
    top = max(cs, key=lambda c: c["d"])

    def where(c: Comparison) -> str:
        return (f"{c['variant']} on the {c['rm']} RM, {c['noise']}, n = {c['n']}: {_pm(c['d'], digits)} {unit}, Holm "
                f"interval {_ci(c['holm_lo'], c['holm_hi'], digits)}")

    cells = sorted({(c["rm"], c["noise"], c["n"]) for c in sig})
    text = (f"{len(sig)} of {len(cs)} comparisons significantly positive after Holm, {len(neg)} significantly "
            f"negative. Largest mean gain: {where(top)}.")
    if sig:
        text += " Significant in: " + "; ".join(f"{rm} {nz} n={n}" for rm, nz, n in cells[:12])
        text += " ..." if len(cells) > 12 else "."
    return text


def _holm_list(items: Sequence[tuple[str, list[float]]], digits: int) -> str:
    """"name: mean [seed interval] (p_Holm x)" per item, Holm across the items' seed t-tests."""
    adj = holm([t_test_p(d) for _, d in items])
    out = []
    for (name, d), p in zip(items, adj, strict=True):
        m, lo, hi = t_interval(d)
        out.append(f"{name}: {_pm(m, digits)} {_ci(lo, hi, digits)} (p_Holm {_p(p)})")
    return "; ".join(out)


def claims_block(rows: Sequence[dict[str, Any]]) -> str:
    """Each seed claim against every table whose positive control passes (Holm within each table); a table whose
    noise-free control does not beat BT cannot detect a margin effect and is left out of every verdict."""
    ok = {k for k in _tables(rows) if control_status(rows, *k)}
    skipped = [k for k in _tables(rows) if k not in ok]
    rows = [r for r in rows if _key(r) in ok]
    acc, ood, bon = compare(rows, "acc"), compare(rows, "ood"), compare(rows, "bon")
    conf = ("conf-batch", "conf-ref")
    top_conf = max((c["d"] for c in acc if c["variant"] in conf), default=math.nan)
    lines = [
        f"- **000, accuracy (+{CLAIM_TARGET_000}% for confidence margins)**: {_claim_line(acc, conf)} "
        f"The largest mean gain of a confidence margin is {_pm(top_conf)} points"
        f"{' (reaches the claimed size)' if top_conf >= CLAIM_TARGET_000 else ', below the claimed +6.31'}.",
    ]
    skew = [(f"{v} n={n}", d) for v in conf for (rm, noise, n), d in sorted(_paired_metric(rows, v, "skew").items())
            if rm == "linear" and noise == "bt:0.5"]
    lines.append("- **000, right-shifted margin distribution** (paired difference in the skewness of the test gaps, "
                 "linear RM, default noise; mean [95% seed interval], Holm-adjusted p across these "
                 f"{len(skew)}): " + _holm_list(skew, 2) + ".")
    lines.append(f"- **000, Best-of-N** (true reward of the best of {16} base-policy samples, paired difference to "
                 f"BT's pick, linear RM): confidence margins: {_claim_line(bon, conf, 'reward', 3)} All margins: "
                 f"{_claim_line(bon, [v for v in VARIANTS if VARIANTS[v].family not in ('control', 'bt')], 'reward', 3)}")
    lines.append(f"- **002, out-of-distribution gains (OT margin)** (test requests answered by a more skilled policy): "
                 f"{_claim_line(ood, ['ot-2'])}")
    steps = [(f"{noise} n={n}", d) for (rm, noise, n), d in sorted(_paired_metric(rows, "ot-2", "steps_to_bt").items())
             if rm == "linear" and noise in ("bt:0.5", "flip:0.2")]
    lines.append("- **002, faster convergence (OT margin)** (paired difference in optimiser steps to reach BT's best "
                 "validation accuracy; negative = faster; mean [95% seed interval], Holm-adjusted p across these "
                 f"{len(steps)}): " + _holm_list(steps, 0) + ".")
    if skipped:
        lines.append("- Left out (positive control fails): " + "; ".join(f"{rm} RM, {nz}" for rm, nz in skipped) + ".")
    other = [v for v in VARIANTS if VARIANTS[v].family in ("fixed", "label", "smooth")]
    lines.append(f"- **Other margins and robust losses** (fixed, label, confidence level, label smoothing): "
                 f"{_claim_line(acc, other)}")
    return "\n".join(lines)


def meta_block(rows: Sequence[dict[str, Any]]) -> str:
    cpu = sum(r.get("seconds") or 0.0 for r in rows)
    units = {(r["rm"], r["noise"], r["seed"]) for r in rows}
    fits = len(rows)
    return (f"{fits} fits in {len(units)} units (RM class x noise x seed); {cpu / 60:.0f} min of fitting time summed "
            f"over the fits (wall time per fit, two processes sharing the 2-core VM).")


# ----------------------------------------------------------------------------- plots and docs


def plot_map(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per noise model (linear RM): each variant's paired gain over BT against the training-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in compare(rows) if c["rm"] == "linear"]
    noises = [k[1] for k in _tables(rows) if k[0] == "linear"]
    if not noises:
        return
    shown = ["soft", "clean", "oracle-1", "label-0.5", "conf-level-0.5", "fixed-1", "conf-ref", "conf-batch", "ot-2",
             "smooth-0.2"]
    colors = dict(zip(shown, plt.get_cmap("tab10").colors, strict=True))
    cols = 3
    rows_n = math.ceil(len(noises) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3.6 * rows_n), sharey=True, squeeze=False)
    sizes = sorted({c["n"] for c in comps})
    for k, noise in enumerate(noises):
        ax = axes[k // cols][k % cols]
        for v in shown:
            cs = sorted((c for c in comps if c["noise"] == noise and c["variant"] == v), key=lambda c: c["n"])
            if not cs:
                continue
            ax.errorbar([c["n"] for c in cs], [c["d"] for c in cs],
                        yerr=[[c["d"] - c["lo"] for c in cs], [c["hi"] - c["d"] for c in cs]], label=v, marker="o",
                        ms=3, capsize=2, lw=1, color=colors[v], ls="--" if VARIANTS[v].family == "control" else "-")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_title(NOISE_LABEL.get(noise, noise), fontsize=9)
        ax.set_ylim(-4, 23)
        if k // cols == rows_n - 1:
            ax.set_xlabel("training pairs")
        if k % cols == 0:
            ax.set_ylabel("test accuracy vs BT (points)")
    for k in range(len(noises), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [plt.Line2D([], [], color=colors[v], ls="--" if VARIANTS[v].family == "control" else "-", marker="o",
                          ms=3) for v in shown]
    fig.legend(handles, shown, loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    fig.suptitle("Linear (well-specified) RM: paired gain over BT in test accuracy against the true preference, "
                 "95% interval over 10 seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
    """The generated blocks of docs/study_margins.md from docs/study/margin_map.csv.gz (and its plot)."""
    from marginkit.study.render import read_rows

    path = Path(docs_dir) / ROWS
    if not path.exists():
        return {}
    rows = read_rows(path)
    if plots:
        plot_map(rows, Path(docs_dir) / "study" / "margin_map_linear.png")
    return {DOC: {"map-meta": meta_block(rows), "map-controls": controls_block(rows), "map-tables": map_block(rows),
                  "map-claims": claims_block(rows), "map-detail": detail_block(rows)}}


def family_order() -> tuple[str, ...]:
    return FAMILY_ORDER


def write_study(rows: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """<out>/study.md (every block of the docs page, from these rows) and <out>/margin_map_linear.png."""
    out = Path(out)
    plot_map(rows, out / "margin_map_linear.png")
    parts = ["# Margin map\n", meta_block(rows), "\n## Controls\n", controls_block(rows), "\n## Map\n",
             map_block(rows), "\n## Claims\n", claims_block(rows), "\n", detail_block(rows), "\n"]
    path = out / "study.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
