"""Report plots (matplotlib, PNG): training curves, reward-gap histograms, bucketed accuracy, reliability.

Every function draws on its own `matplotlib.figure.Figure` (no pyplot, no global state, no
backend switch), writes one PNG at `out` (parent folders created) and returns `out`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from marginkit.evaluate.metrics import Bucket, Calibration, pairwise_accuracy

__all__ = [
    "plot_accuracy_by_bucket",
    "plot_margin_histograms",
    "plot_reliability",
    "plot_training_curves",
    "read_metrics_jsonl",
]

_DPI = 110

# One curve: (steps, values), both [n_points].
Series = tuple[np.ndarray, np.ndarray]


def _color(i: int) -> tuple[float, float, float, float]:
    return colormaps["tab10"](i % 10)


def _save(fig: Figure, out: Path | str) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _legend_below(fig: Figure, ax: Axes | None = None, handles: Sequence[Any] | None = None, ncols: int = 2) -> None:
    """The legend at the foot of the figure, outside the data (issue 14: legends inside the axes covered
    the curves). `handles` default to the labelled artists of `ax`."""
    if handles is None:
        handles = ax.get_legend_handles_labels()[0] if ax is not None else []
    fig.legend(handles=list(handles), fontsize="small", loc="outside lower center", ncols=ncols, frameon=False)


def read_metrics_jsonl(path: Path | str, keys: Sequence[str]) -> dict[str, dict[str, Series]]:
    """Read a metrics JSONL log into {key: {"train": (steps, values), "eval": (steps, values)}}.

    Each non-blank line is a JSON object with an integer "step". A train value of `key` is
    `line[key]`; an eval value is `line["eval_" + key]` (TRL's prefix), whichever line it is on.
    Missing, null or non-finite values are skipped; points are sorted by step.
    Raises ValueError naming the file and line for invalid JSON or a missing/non-numeric "step".
    """
    path = Path(path)
    points: dict[str, dict[str, list[tuple[float, float]]]] = {k: {"train": [], "eval": []} for k in keys}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_no}: invalid JSON ({err.msg})") from err
            if not isinstance(record, dict) or not _is_number(record.get("step")):
                raise ValueError(f'{path} line {line_no}: needs a JSON object with a numeric "step"')
            for key in keys:
                for split, name in (("train", key), ("eval", f"eval_{key}")):
                    if _is_number(record.get(name)):
                        points[key][split].append((float(record["step"]), float(record[name])))
    result: dict[str, dict[str, Series]] = {}
    for key, splits in points.items():
        result[key] = {}
        for split, pts in splits.items():
            arr = np.array(sorted(pts), dtype=np.float64).reshape(-1, 2)
            result[key][split] = (arr[:, 0], arr[:, 1])
    return result


# Per key, a metric drawn dotted beside it in each run's colour: the loss a run has at zero reward gap
# (ln 2 for BT, mean softplus(m) with target margins m), so margin runs' higher losses read as what they
# are, a different starting point, not a worse model (issue 14).
REFERENCES: Mapping[str, str] = {"loss": "diagnostics/loss_at_zero_gap"}


def plot_training_curves(
    metrics_jsonl_paths: Mapping[str, Path | str],
    out: Path | str,
    keys: Sequence[str] = ("loss", "rewards/accuracies", "rewards/margins"),
    references: Mapping[str, str] = REFERENCES,
) -> Path:
    """One subplot per metric key, one colour per run (label = dict key): train as a line, eval as
    markers, and `references[key]` (a train metric) dotted when the logs have it. The legend, under the
    axes, names each run's colour and each line style once."""
    from matplotlib.lines import Line2D

    if not metrics_jsonl_paths:
        raise ValueError("metrics_jsonl_paths is empty: give at least one {run name: path}")
    if not keys:
        raise ValueError("keys is empty: give at least one metric name")
    wanted = list(dict.fromkeys([*keys, *(references[k] for k in keys if k in references)]))
    runs = {name: read_metrics_jsonl(path, wanted) for name, path in metrics_jsonl_paths.items()}
    # The legend: each run's colour, then each line style drawn. matplotlib fills it column by column, so
    # two rows per column keep the runs together and the styles together (runs bt, fixed | label, oracle |
    # train, eval | loss at Δ = 0).
    n_styles = 1 + any(r[k]["eval"][0].size for r in runs.values() for k in keys) + any(
        r[references[k]]["train"][0].size for r in runs.values() for k in keys if k in references)
    ncols = min(4 * len(keys), -(-(len(runs) + n_styles) // 2))
    legend_rows = -(-(len(runs) + n_styles) // ncols)
    fig = Figure(figsize=(4.2 * len(keys), 3.6 + 0.25 * legend_rows), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, len(keys), squeeze=False)[0]
    styles: dict[str, Line2D] = {}  # the line styles drawn in any panel, for the one legend
    for ax, key in zip(axes, keys):
        drawn = False
        for i, (name, series) in enumerate(runs.items()):
            steps, values = series[key]["train"]
            if steps.size:
                ax.plot(steps, values, color=_color(i), lw=1.4, label=f"{name} train")
                drawn = True
                styles["train"] = Line2D([], [], color="black", lw=1.4, label="train")
            steps, values = series[key]["eval"]
            if steps.size:
                ax.plot(steps, values, color=_color(i), ls="--", marker="o", ms=5, label=f"{name} eval")
                drawn = True
                styles["eval"] = Line2D([], [], color="black", ls="--", marker="o", ms=5, label="eval")
            ref = references.get(key)
            steps, values = series[ref]["train"] if ref else (np.empty(0), np.empty(0))
            if steps.size:
                ax.plot(steps, values, color=_color(i), lw=1.0, ls=":", label=f"{name} {key} at Δ = 0")
                styles["ref"] = Line2D([], [], color="black", lw=1.0, ls=":", label=f"{key} at Δ = 0")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if styles:
        colours = [Line2D([], [], color=_color(i), lw=4, label=name) for i, name in enumerate(runs)]
        _legend_below(fig, handles=colours + list(styles.values()), ncols=ncols)
    fig.suptitle("Training curves")
    return _save(fig, out)


def plot_margin_histograms(
    gaps: Mapping[str, np.ndarray],
    out: Path | str,
    title: str = "Reward gap Δ = r_chosen − r_rejected",
    bins: int = 40,
) -> Path:
    """Overlaid histograms of Δ [B] per run on shared bin edges, with Δ = 0 marked; legend gives B and accuracy."""
    if not gaps:
        raise ValueError("gaps is empty: give at least one {run name: reward_gap [B]}")
    accuracies = {name: pairwise_accuracy(gap) for name, gap in gaps.items()}  # validates each [B]
    arrays = {name: np.asarray(gap, dtype=np.float64) for name, gap in gaps.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(arrays.values())), bins=bins)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, gap) in enumerate(arrays.items()):
        label = f"{name} (B={gap.size}, acc={accuracies[name]:.3f})"
        ax.hist(gap, bins=edges, color=_color(i), alpha=0.35, label=label)
        ax.hist(gap, bins=edges, color=_color(i), histtype="step", lw=1.4)
    ax.axvline(0.0, color="black", lw=1.0, ls=":", label="Δ = 0")
    ax.set_title(title)
    ax.set_xlabel("reward gap Δ")
    ax.set_ylabel("pairs")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, out)


def _edge(x: float) -> str:
    return "0" if abs(x) < 5e-3 else f"{x:.3g}"  # the lowest |gap| is ~1e-17, not worth 7 characters


def _bucket_label(bucket: Bucket, last: bool) -> str:
    return f"[{_edge(bucket.lo)}, {_edge(bucket.hi)}{']' if last else ')'}"


def plot_accuracy_by_bucket(
    buckets: Mapping[str, Sequence[Bucket]],
    out: Path | str,
    title: str = "Pairwise accuracy by bucket",
    xlabel: str = "bucket of key (quantiles)",
) -> Path:
    """Grouped bars: accuracy per bucket (x) per run (colour), chance at 0.5, the legend under the axes.

    Accepts `accuracy_by_bucket` results or lists of Buckets. When every run has the same edges
    the ticks show the key ranges, otherwise bucket ordinals (runs may differ in bucket count). The
    pair count n goes under the tick when every run has the same n there (one test set), otherwise
    above each bar.
    """
    if not buckets:
        raise ValueError("buckets is empty: give at least one {run name: buckets}")
    runs = {name: list(bs) for name, bs in buckets.items()}
    n_slots = max((len(bs) for bs in runs.values()), default=0)
    if n_slots == 0:
        raise ValueError("every run has zero buckets: nothing to plot")
    width = 0.8 / len(runs)
    same_n = len({tuple(b.n for b in bs) for bs in runs.values()}) == 1
    fig = Figure(figsize=(max(5.0, 1.0 * n_slots + 1.6), 4.4), layout="constrained")  # a half-page grid cell
    ax = fig.subplots()
    for i, (name, bs) in enumerate(runs.items()):
        x = np.arange(len(bs)) + (i - (len(runs) - 1) / 2) * width
        bars = ax.bar(x, [b.accuracy for b in bs], width=width, color=_color(i), label=name)
        if not same_n:
            ax.bar_label(bars, labels=[f"n={b.n}" for b in bs], fontsize="x-small", padding=2)
    edge_sets = {tuple((b.lo, b.hi) for b in bs) for bs in runs.values()}
    ticks = runs[next(iter(runs))]
    if len(edge_sets) == 1:
        labels = [_bucket_label(b, j == len(ticks) - 1) for j, b in enumerate(ticks)]
    else:
        labels = [f"bucket {j + 1}" for j in range(n_slots)]
    if same_n:
        labels = [f"{label}\nn={b.n}" for label, b in zip(labels, ticks)]
    ax.set_xticks(np.arange(n_slots), labels)
    ax.axhline(0.5, color="black", lw=1.0, ls=":", label="chance")
    ax.set_ylim(0.0, 1.08 if same_n else 1.15)  # headroom for the n labels above the bars
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairwise accuracy (ties ½)")
    ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, ax, ncols=min(len(runs) + 1, 3))
    return _save(fig, out)


def plot_reliability(calibrations: Mapping[str, Calibration], out: Path | str) -> Path:
    """Reliability diagram: observed positive rate vs mean σ(Δ) per bin, per run, against the diagonal.

    Marker area grows with the bin's share of evaluation points; the legend gives ECE and Brier.
    """
    if not calibrations:
        raise ValueError("calibrations is empty: give at least one {run name: Calibration}")
    fig = Figure(figsize=(5.4, 5.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], color="black", lw=1.0, ls=":", label="perfect calibration")
    for i, (name, cal) in enumerate(calibrations.items()):
        p = [b.p_mean for b in cal.bins]
        frac = [b.frac_positive for b in cal.bins]
        sizes = [20.0 + 300.0 * b.n / cal.n for b in cal.bins]
        label = f"{name} (ECE={cal.ece:.3f}, Brier={cal.brier:.3f})"
        ax.plot(p, frac, color=_color(i), lw=1.2, label=label)
        ax.scatter(p, frac, s=sizes, color=_color(i), alpha=0.7, edgecolors="white")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_title("Reliability of σ(Δ)")
    ax.set_xlabel("predicted P(chosen wins) = σ(Δ), bin mean")
    ax.set_ylabel("observed fraction chosen wins")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, ncols=1)
    return _save(fig, out)


# ---- Best-of-N (from a bon_results.json dict, see evaluate/bon_run.py) and saved gap histograms ----


def _kl_ticks(ax: Axes, ns: Sequence[int], kl: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ns), [f"{n}\n{k:.2f}" for n, k in zip(ns, kl)])
    ax.minorticks_off()
    ax.set_xlabel("N  (analytic KL = log N − (N−1)/N, nats)")


def plot_bon_curves(results: Mapping[str, object], out: Path | str, title: str = "Best-of-N") -> Path:
    """Two panels against N: the judge's reward of each RM's pick (bootstrap band, the judge's own
    best-of-N and an unguided pick as references, a star at the peak), and the RM's own score of its
    pick minus at N = 1 (proxy gain; it can only rise). `results` is a bon_results.json dict."""
    ns, kl, per_rm = list(results["ns"]), list(results["kl"]), dict(results["per_rm"])
    if not per_rm:
        raise ValueError("results has no RMs (per_rm is empty)")
    ref = dict(results.get("reference", {}))
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_j, ax_p = fig.subplots(1, 2)
    for i, (name, d) in enumerate(per_rm.items()):
        mean = np.array([m["mean"] for m in d["judge"]])
        ax_j.plot(ns, mean, color=_color(i), marker="o", ms=4, lw=1.6, label=name)
        ax_j.fill_between(ns, [m["low"] for m in d["judge"]], [m["high"] for m in d["judge"]], color=_color(i),
                          alpha=0.15, lw=0)
        peak = int(np.argmax(mean))
        ax_j.plot([ns[peak]], [mean[peak]], marker="*", ms=13, color=_color(i), mfc=_color(i), mec="black", ls="none")
        proxy = np.array(d["proxy"], dtype=np.float64)
        ax_p.plot(ns, proxy - proxy[0], color=_color(i), marker="o", ms=4, lw=1.6, label=name)
    for key, style in (("judge_best", "--"), ("unguided", ":")):
        if key in ref:
            label = "judge's own best-of-N" if key == "judge_best" else "unguided pick"
            ax_j.plot(ns, ref[key], color="grey", ls=style, lw=1.2, label=label)
    judge = results.get("judge", {})
    judge_name = "true reward" if isinstance(judge, dict) and judge.get("kind") == "world" else "judge reward"
    ax_j.set_title(f"{judge_name} of the pick (★ peak)")
    ax_j.set_ylabel(f"mean {judge_name} ({int(round(100 * float(results.get('level', 0.95))))}% band)")
    ax_p.set_title("proxy gain: RM's own score of its pick − at N=1")
    ax_p.set_ylabel("proxy reward gain")
    for ax in (ax_j, ax_p):
        _kl_ticks(ax, ns, kl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{title}: {results.get('n_prompts', '?')} prompts × {results.get('n_samples', '?')} samples")
    return _save(fig, out)


def plot_bon_win_rates(results: Mapping[str, object], out: Path | str, title: str = "Best-of-N win rate") -> Path:
    """Against N, per RM: the win rate (ties ½) of its pick over the baseline's pick, and, when the
    results have it, the paired difference of judge rewards (pick − baseline's pick), each with its
    band and the no-difference line (N = 1 sits on it exactly: every RM picks the first sample).
    The win-rate axis spans the data and 0.5, not [0, 1]: differences of a few points stay visible."""
    ns, kl, wins = list(results["ns"]), list(results["kl"]), dict(results["win_rates"])
    if not wins:
        raise ValueError("results has no win rates (only the baseline RM)")
    diffs = dict(results.get("judge_diff") or {})
    base = results.get("baseline", "baseline")
    fig = Figure(figsize=(11.0 if diffs else 6.4, 4.2), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, 2 if diffs else 1, squeeze=False)[0]
    lows, highs = [0.5], [0.5]
    for i, (name, ws) in enumerate(wins.items(), start=1):  # colour 0 is the baseline in plot_bon_curves
        low, high = [w["low"] for w in ws], [w["high"] for w in ws]
        axes[0].plot(ns, [w["value"] for w in ws], color=_color(i), marker="o", ms=4, lw=1.6, label=name)
        axes[0].fill_between(ns, low, high, color=_color(i), alpha=0.15, lw=0)
        lows += [v for v in low if math.isfinite(v)]
        highs += [v for v in high if math.isfinite(v)]
        if diffs:
            d = diffs[name]
            axes[1].plot(ns, [m["mean"] for m in d], color=_color(i), marker="o", ms=4, lw=1.6, label=name)
            axes[1].fill_between(ns, [m["low"] for m in d], [m["high"] for m in d], color=_color(i), alpha=0.15, lw=0)
    pad = max(0.02, 0.1 * (max(highs) - min(lows)))
    axes[0].set_ylim(max(0.0, min(lows) - pad), min(1.0, max(highs) + pad))
    axes[0].set_ylabel(f"win rate over {base} (ties ½)")
    axes[0].set_title(title)
    if diffs:
        axes[1].set_ylabel(f"judge reward: pick − {base}'s pick")
        axes[1].set_title("paired judge difference")
    for ax in axes:
        ax.axhline(0.5 if ax is axes[0] else 0.0, color="black", lw=1.0, ls=":", label="no difference")
        _kl_ticks(ax, ns, kl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    return _save(fig, out)


def plot_gap_histogram_counts(hists: Mapping[str, tuple[Sequence[float], Sequence[float]]], out: Path | str,
                              title: str = "Reward gap Δ (saved histograms)") -> Path:
    """Step histograms from saved (counts [bins], edges [bins + 1]) per run, as fractions of each
    run's pairs (runs differ in size and bin edges), with Δ = 0 marked."""
    if not hists:
        raise ValueError("hists is empty: give at least one {run name: (counts, edges)}")
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, (counts, edges)) in enumerate(hists.items()):
        c, e = np.asarray(counts, dtype=np.float64), np.asarray(edges, dtype=np.float64)
        if e.shape != (c.size + 1,):
            raise ValueError(f"{name}: need edges [bins + 1], got {e.shape} for {c.size} bins")
        total = c.sum()
        ax.stairs(c / total if total else c, e, color=_color(i), lw=1.5, fill=False,
                  label=f"{name} (B={int(total)})")
    ax.axvline(0.0, color="black", lw=1.0, ls=":", label="Δ = 0")
    ax.set_title(title)
    ax.set_xlabel("reward gap Δ")
    ax.set_ylabel("fraction of pairs per bin")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, out)


__all__ += ["plot_bon_curves", "plot_bon_win_rates", "plot_gap_histogram_counts"]


def plot_target_vs_learned(target: np.ndarray, gap: np.ndarray, active: np.ndarray, out: Path | str,
                           title: str = "Target margin m vs learned gap Δ (training pairs, final model)") -> Path:
    """Left: histograms of the strategy's target margins m (active pairs) and of the learned gaps Δ
    on the same pairs; right: Δ against m per pair with the line Δ = m (pairs below it still pay a
    margin loss). Inputs are [B] arrays; `active` is bool [B]."""
    m, d, a = (np.asarray(x) for x in (target, gap, active))
    if not (m.shape == d.shape == a.shape) or m.ndim != 1 or m.size == 0:
        raise ValueError(f"need three non-empty [B] arrays, got {m.shape}, {d.shape}, {a.shape}")
    a = a.astype(bool)
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    shown = m[a] if a.any() else m
    edges = np.histogram_bin_edges(np.concatenate([shown, d]), bins=40)
    left.hist(shown, bins=edges, color=_color(0), alpha=0.45, label=f"target m ({int(a.sum())} active of {a.size})")
    left.hist(d, bins=edges, color=_color(1), alpha=0.45, label=f"learned Δ (mean {d.mean():.2f})")
    left.set_xlabel("value")
    left.set_ylabel("pairs")
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    right.scatter(m[a], d[a], s=6, alpha=0.4, color=_color(0), label="active pairs")
    if (~a).any():
        right.scatter(m[~a], d[~a], s=6, alpha=0.3, color="grey", label="filtered (plain BT)")
    lo, hi = float(min(m.min(), d.min())), float(max(m.max(), d.max()))
    right.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="Δ = m")
    right.set_xlabel("target margin m")
    right.set_ylabel("learned gap Δ")
    right.grid(alpha=0.3)
    right.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, out)


__all__ += ["plot_target_vs_learned"]
