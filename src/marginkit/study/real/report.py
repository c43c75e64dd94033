"""The real study's study.md tables and its accuracy and Best-of-N plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.evaluate.stats import format_interval as _ci

ROWS = "study/real.csv.gz"  # the committed rows, relative to docs/ (study/real/rows.py)

__all__ = ["format_real_markdown", "plot_summary", "render_docs", "ROWS"]


def format_real_markdown(summary: dict[str, Any]) -> str:
    cfg = summary.get("config", {})
    n = max((e["n_seeds"] for e in summary["table"]), default=0)
    sizes = summary.get("sizes", {})
    lines = [f"### {cfg.get('task', '?')} ({cfg.get('backbone', '?')} MiniLM, {n} seeds; mean [95% t-interval "
             "over seeds])", "", summary.get("about", ""), "",
             f"Pairs: {sizes.get('train', '?')} train / {sizes.get('validation', '?')} validation / "
             f"{sizes.get('test', '?')} test; OOD sections {sizes.get('sections', {})}.", "",
             "| variant | test acc | vs BT (seeds) | vs BT (test pairs) | val acc | OOD mean | OOD vs BT | "
             "skew(Δ test) | s / run |", "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["table"]:
        name = f"**{e['variant']}**" if summary["chosen"].get(e["family"]) == e["variant"] and e["family"] != "bt" \
            else e["variant"]
        bt = e["variant"] == "bt"
        lines.append(f"| {name} | {_ci(e['acc'])} | {'–' if bt else _ci(e['acc_vs_bt'])} | "
                     f"{'–' if bt else _ci(e['acc_vs_bt_pairs'])} | {_ci(e['val_acc'])} | "
                     f"{_ci(e['ood_mean'])} | {'–' if bt else _ci(e['ood_vs_bt'])} | {_ci(e['skewness'], 2)} | "
                     f"{e['seconds']:.1f} |")
    if summary.get("length_baseline"):
        lines += ["", "Length alone (the longer response wins, ties 1/2): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in summary["length_baseline"].items()) + "."]
    lines += ["", "Bold: each family's variant with the best mean validation accuracy; test numbers never choose. "
              "vs BT (seeds): paired difference, t-interval over training seeds (training noise only); vs BT (test "
              "pairs): the seed-averaged paired difference, bootstrap over test pairs (which pairs were drawn).", ""]
    secs = list(summary["table"][0]["sections"]) if summary["table"] else []
    if secs:
        lines += ["OOD sections (accuracy against the section's own labels):", "",
                  "| variant | " + " | ".join(secs) + " |", "|---|" + "---|" * len(secs)]
        for e in summary["table"]:
            lines.append(f"| {e['variant']} | " + " | ".join(_ci(e["sections"][s]) for s in secs) + " |")
        lines.append("")
    if summary["table"] and "by_label" in summary["table"][0]:
        b0 = summary["table"][0]["by_label"]
        lines += ["Test accuracy by |label gap| quartile (graded data):", "",
                  "| variant | " + " | ".join(f"[{b['low']:.2f}, {b['high']:.2f}] (n={b['n']})" for b in b0) + " |",
                  "|---|" + "---|" * len(b0)]
        for e in summary["table"]:
            lines.append(f"| {e['variant']} | " + " | ".join(_ci(b["acc"]) for b in e["by_label"]) + " |")
        lines.append("")
    if summary["bon"]:
        ns = summary["bon"][0]["ns"]
        show = [j for j, k in enumerate(ns) if k in (2, 4, 9)]
        lines += [f"Offline Best-of-N on {sizes.get('pool', '?')} held-out AlpacaEval instructions (gold: the "
                  "GPT-4-turbo judge's probability of beating the reference; win vs BT's pick, ties 1/2; LC = length-"
                  "controlled; = longest: the pick is also the longest candidate). Gold and = longest: mean "
                  "[t-interval over seeds]; win rates: averaged over seeds per instruction, [bootstrap over "
                  "instructions]:", "",
                  "| variant | N | gold of pick | win vs BT | LC gold | LC win vs BT | = longest |", "|---|---|---|---|---|---|---|"]
        for e in summary["bon"]:
            for j in show:
                win = _ci(e["win_instr"][j]) if e.get("win_instr") else "–"
                lc_win = _ci(e["lc_win_instr"][j]) if e.get("lc_win_instr") else "–"
                lines.append(f"| {e['variant']} | {ns[j]} | {_ci(e['gold'][j])} | {win} | {_ci(e['lc_gold'][j])} | "
                             f"{lc_win} | {_ci(e['agree_longest'][j])} |")
        best = summary["bon"][0]["judge_best"]
        lines += ["", "Judge's own best of the first N (ceiling): "
                  + ", ".join(f"N={ns[j]}: {best[j][0]:.3f}" for j in show) + ".", ""]
    return "\n".join(lines) + "\n"


def plot_summary(out: Path, summary: dict[str, Any], accuracy_png: str = "study_accuracy.png",
                 bon_png: str = "study_bon.png") -> None:
    """The accuracy plot (held-out and OOD mean per variant) and, with a Best-of-N, its gold-vs-N plot, in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    if not table:
        return
    task = summary.get("config", {}).get("task", "")
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(table) + 2), sharey=True)
    for ax, (metric, label) in zip(axes, [("acc", "held-out accuracy"), ("ood_mean", "OOD sections, mean accuracy")]):
        y = np.arange(len(table))
        means = np.array([e[metric][0] for e in table])
        lo = np.array([e[metric][1] if math.isfinite(e[metric][1]) else e[metric][0] for e in table])
        hi = np.array([e[metric][2] if math.isfinite(e[metric][2]) else e[metric][0] for e in table])
        ax.errorbar(means, y, xerr=[means - lo, hi - means], fmt="o", capsize=3)
        ax.axvline(means[0], color="grey", ls="--", lw=1, label="BT mean")
        ax.set_yticks(y, [e["variant"] for e in table])
        ax.set_xlabel(label)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{task}: margin variants vs BT (mean, 95% t-interval over seeds)")
    fig.tight_layout()
    fig.savefig(out / accuracy_png, dpi=110)
    plt.close(fig)
    if summary["bon"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for e in summary["bon"]:
            style = {"color": "black", "lw": 2} if e["variant"] == "bt" else ({"color": "grey", "ls": ":"}
                                                                               if e["variant"] == "longest" else {})
            axes[0].plot(e["ns"], [m[0] for m in e["gold"]], label=e["variant"], **style)
            axes[1].plot(e["ns"], [m[0] for m in e["lc_gold"]], label=e["variant"], **style)
        best = summary["bon"][0]["judge_best"]
        for ax, title in zip(axes, ["judge gold of the pick", "length-controlled gold"]):
            if title.startswith("judge"):
                ax.plot(summary["bon"][0]["ns"], [b[0] for b in best], color="green", ls="--", label="judge's best")
            ax.set_xlabel("N (candidates)")
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / bon_png, dpi=110)
        plt.close(fig)


def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
    """study.render's renderer: docs/study_real.md's block `real-<task>` per task (the tables study.md prints),
    `real-tune` (the head's grid) when the rows hold one,
    and, with `plots`, docs/study/real_<task>_accuracy.png and real_<task>_bon.png, all from docs/study/real.csv.gz."""
    from marginkit.study.real.rows import format_tune_table, study_summaries
    from marginkit.study.render import read_rows

    rows = read_rows(Path(docs_dir) / ROWS)
    blocks = {"real-tune": format_tune_table(rows)} if any(r["kind"] == "tune" for r in rows) else {}
    for summary in study_summaries(rows):
        task = summary["config"]["task"]
        blocks[f"real-{task}"] = format_real_markdown(summary)
        if plots:
            plot_summary(Path(docs_dir) / "study", summary, f"real_{task}_accuracy.png", f"real_{task}_bon.png")
    return {"study_real.md": blocks}
