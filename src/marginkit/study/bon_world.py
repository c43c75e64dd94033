"""Best-of-N on the gold world over seeds (docs/bon.md, "Result on the gold world"): raw rows and the docs tables.

Each seed is one `marginkit bon` run (evaluate/bon_run.py) on the RMs of one `marginkit demo --quick` (+ a
confidence RM); `bon_rows` turns its bon_results.json into one row per (seed, RM, N): the mean judge (true)
reward of the pick, the RM's own mean score of it (proxy), the win rate over the baseline's pick with its
wins / ties / losses, the paired judge difference to the baseline's pick, and the N-level references (KL of the
Best-of-N policy, the judge's own best, the unguided pick). `rm_rows` adds each RM's test accuracy against the
true preference from the demo's summary.json. `render_docs` rebuilds docs/bon.md's tables and
docs/study/bon_world_win_rates.png from docs/study/bon_world.csv.gz alone: every mean is over seeds, every
interval a 95% Student-t interval over seeds (as `bon_run.combine_runs`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from marginkit.evaluate.stats import t_interval
from marginkit.study.render import read_rows, write_rows

__all__ = ["BON_ROWS", "bon_rows", "rm_rows", "export_bon_rows", "format_bon_tables", "render_docs"]

BON_ROWS = "study/bon_world.csv.gz"  # the committed rows, relative to docs/


def bon_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (RM, N) of a bon_results dict (kind "pick"); the baseline's win columns are empty."""
    rows = []
    for rm, per in d["per_rm"].items():
        for i, n in enumerate(d["ns"]):
            win = d["win_rates"].get(rm, [None] * len(d["ns"]))[i]
            diff = d["judge_diff"].get(rm, [None] * len(d["ns"]))[i]
            rows.append({"kind": "pick", "seed": d["seed"], "rm": rm, "baseline": d["baseline"], "n": n,
                         "n_prompts": d["n_prompts"], "k": d["n_samples"], "kl": d["kl"][i],
                         "judge": per["judge"][i]["mean"], "proxy": per["proxy"][i],
                         "win": None if win is None else win["value"],
                         **{k: None if win is None else win[k] for k in ("wins", "ties", "losses")},
                         "judge_diff": None if diff is None else diff["mean"],
                         "judge_best": d["reference"]["judge_best"][i], "unguided": d["reference"]["unguided"][i]})
    return rows


def rm_rows(seed: int, demo_summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per demo RM (kind "rm"): its test accuracy against the labels and against the true preference."""
    return [{"kind": "rm", "seed": seed, "rm": r["strategy"], "acc_labels": r["acc_labels"], "acc_true": r["acc_true"]}
            for r in demo_summary]


def export_bon_rows(runs: Sequence[tuple[str | Path, str | Path | None]], dest: str | Path) -> Path:
    """(bon run folder, demo folder or None) per seed -> one committed rows file (`write_rows`)."""
    rows = []
    for bon_dir, demo_dir in runs:
        d = json.loads((Path(bon_dir) / "bon_results.json").read_text())
        rows += bon_rows(d)
        if demo_dir is not None:
            rows += rm_rows(d["seed"], json.loads((Path(demo_dir) / "summary.json").read_text()))
    return write_rows(dest, rows)


def _ci(values: list[float], fmt: str = ".3f") -> str:
    mean, low, high = t_interval(values)
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def format_bon_tables(rows: list[dict[str, Any]]) -> str:
    """docs/bon.md's gold-world tables: win rate over the baseline per RM and N (mean over seeds [95% t], wins /
    ties / losses summed over seeds' prompts, seeds above 1/2; bold when the interval's low end is above 1/2),
    the judge reward of each pick with the references, the paired difference to the baseline's pick, and the
    RMs' test accuracy."""
    picks = [r for r in rows if r["kind"] == "pick"]
    seeds = sorted({r["seed"] for r in picks})
    ns = sorted({r["n"] for r in picks})
    rms = list(dict.fromkeys(r["rm"] for r in picks))
    base = picks[0]["baseline"]
    others = [r for r in rms if r != base]
    by = {(r["seed"], r["rm"], r["n"]): r for r in picks}

    def col(rm: str, n: int, key: str) -> list[Any]:
        return [by[(s, rm, n)][key] for s in seeds]

    def win_cell(rm: str, n: int) -> str:
        wins, ties, losses = (sum(col(rm, n, k)) for k in ("wins", "ties", "losses"))
        above = sum(w > 0.5 for w in col(rm, n, "win"))
        low = t_interval(col(rm, n, "win"))[1]
        text = _ci(col(rm, n, "win"))
        return f"{'**' + text + '**' if low > 0.5 else text} ({wins}/{ties}/{losses}) {above}/{len(seeds)}"

    first = by[(seeds[0], base, ns[0])]
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {first['n_prompts']} prompts each, K = {first['k']} "
             f"samples per prompt. **Win rate over {base}** (mean over seeds [95% t-interval over seeds]; wins/ties/"
             "losses summed over the seeds' prompts; seeds above 1/2; bold: the interval is above 1/2):", "",
             "| N | KL | " + " | ".join(others) + " |", "|---|---|" + "---|" * len(others)]
    for n in ns:
        lines.append(f"| {n} | {by[(seeds[0], base, n)]['kl']:.2f} | " + " | ".join(win_cell(r, n) for r in others)
                     + " |")
    lines += ["", "**True reward of the pick** (mean over seeds [95% t]); the judge's own best and an unguided "
              "pick (the mean of the first N samples) bound it:", "",
              "| N | " + " | ".join(rms) + " | judge's own best | unguided |", "|---|" + "---|" * (len(rms) + 2)]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(_ci(col(r, n, "judge")) for r in rms)
                     + f" | {_ci(col(base, n, 'judge_best'))} | {_ci(col(base, n, 'unguided'))} |")
    lines += ["", f"**Paired difference of true rewards**, each RM's pick minus {base}'s (same prompt; mean over "
              "seeds [95% t]):", "", "| N | " + " | ".join(f"{r} − {base}" for r in others) + " |",
              "|---|" + "---|" * len(others)]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(_ci(col(r, n, "judge_diff"), "+.3f") for r in others) + " |")
    accs = [r for r in rows if r["kind"] == "rm"]
    if accs:
        names = list(dict.fromkeys(r["rm"] for r in accs))
        lines += ["", "RM test accuracy against the true preference (the demo's test split, mean over seeds [95% t]): "
                  + ", ".join(f"{m} {_ci([r['acc_true'] for r in accs if r['rm'] == m])}" for m in names)
                  + (f" ({', '.join(sorted(set(rms) - set(names)))} not evaluated)" if set(rms) - set(names) else "")
                  + "."]
    return "\n".join(lines) + "\n"


def plot_win_rates(rows: list[dict[str, Any]], path: Path) -> None:
    """Win rate over the baseline against N, per RM: mean over seeds with its 95% t-interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [r for r in rows if r["kind"] == "pick" and r["win"] is not None]
    ns = sorted({r["n"] for r in picks})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for rm in dict.fromkeys(r["rm"] for r in picks):
        stats = [t_interval([r["win"] for r in picks if r["rm"] == rm and r["n"] == n]) for n in ns]
        means = [m for m, _, _ in stats]
        ax.errorbar(ns, means, yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]], capsize=3,
                    marker="o", label=rm)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples)")
    ax.set_ylabel(f"win rate over {picks[0]['baseline']}")
    ax.set_title("Best-of-N on the gold world (mean, 95% t-interval over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
    """study.render's renderer: docs/bon.md's block `bon-world` (and, with `plots`,
    docs/study/bon_world_win_rates.png) from docs/study/bon_world.csv.gz."""
    rows = read_rows(Path(docs_dir) / BON_ROWS)
    if plots:
        plot_win_rates(rows, Path(docs_dir) / "study" / "bon_world_win_rates.png")
    return {"bon.md": {"bon-world": format_bon_tables(rows)}}
