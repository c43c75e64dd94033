"""The real study's raw rows: a study folder's results.jsonl, bon.jsonl and summary.json as flat rows, and back.

`flat_rows(task_dir)` gives three kinds of row (column `kind`), small enough to commit
(docs/study/real.csv.gz, `study.render.write_rows`):

- `task`: one per (task, backbone): the pair counts, each OOD section's size, the "longer response wins"
  accuracy of the test split and of each section (`len:<name>`), the |label gap| quartile edges and sizes;
- `run`: one per (task, backbone, seed, variant): test / validation accuracy, skewness of the test gaps, each
  OOD section's accuracy (`ood:<name>`) and their mean, accuracy per |label| quartile (`byl<j>`), training
  seconds, and `test_correct`: the per-test-pair outcome as one letter per pair (w right, t tie, l wrong), which
  the "vs BT (test pairs)" bootstrap needs;
- `bon`: one per (task, backbone, seed, variant, N) of the offline Best-of-N: the judge's gold of the pick (raw
  and length-controlled), how often the pick is the longest, the judge's own best of the first N, and the pick's
  outcome against BT's pick on each instruction (`win_outcomes`, `lc_win_outcomes`: w win, t tie, l loss);
- `tune`: one per (task, head_lr, head_epochs, seed) of `--tune-head`'s grid (BT's validation accuracy), when the
  task folder has a tune_head.json.

`study_summaries(rows)` turns them back into `summarize_real`'s input and returns one summary per
(task, backbone), the dict `format_real_markdown` and `plot_summary` take.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.study.margins import _read_rows as _read_jsonl
from marginkit.study.real.summary import summarize_real

__all__ = ["flat_rows", "export_rows", "study_summaries", "format_tune_table", "encode_outcomes",
           "decode_outcomes"]


_LETTERS = "ltw"  # outcome 0, 1/2, 1: letters, so that read_rows never takes a cell for a number


def encode_outcomes(outcomes: Any) -> str:
    """Outcomes in {0, 1/2, 1} as one letter each (l, t, w). Example: [1, 0, 0.5] -> "wlt"."""
    twice = 2 * np.asarray(outcomes, dtype=np.float64)
    digits = np.rint(twice).astype(int)
    if not np.array_equal(digits, twice) or digits.min(initial=0) < 0 or digits.max(initial=0) > 2:
        raise ValueError(f"outcomes must be 0, 1/2 or 1, got {sorted(set(np.asarray(outcomes).tolist()))}")
    return "".join(_LETTERS[d] for d in digits)


def decode_outcomes(text: str) -> list[float]:
    """The inverse of `encode_outcomes`: "wlt" -> [1.0, 0.0, 0.5]."""
    return [_LETTERS.index(c) / 2 for c in text]


def flat_rows(task_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of one task's study folder (results.jsonl, bon.jsonl, summary.json), flat (module docstring)."""
    task_dir = Path(task_dir)
    summary = json.loads((task_dir / "summary.json").read_text())
    cfg = summary["config"]
    seeds, backbone = set(cfg["seeds"]), cfg["backbone"]
    results = [r for r in _read_jsonl(task_dir / "results.jsonl") if r["backbone"] == backbone and r["seed"] in seeds]
    bon = [r for r in _read_jsonl(task_dir / "bon.jsonl") if r["backbone"] == backbone and r["seed"] in seeds]
    key = {"task": cfg["task"], "backbone": backbone}
    sizes = summary["sizes"]
    meta: dict[str, Any] = {"kind": "task", **key, "about": summary.get("about", ""), "n_train": sizes["train"],
                            "n_val": sizes["validation"], "n_test": sizes["test"], "n_pool": sizes.get("pool", 0),
                            **{f"size:{k}": v for k, v in sizes["sections"].items()},
                            **{f"len:{k}": v for k, v in summary.get("length_baseline", {}).items()}}
    for j, b in enumerate(results[0].get("by_label", []) if results else []):
        meta.update({f"byl{j}_low": b["low"], f"byl{j}_high": b["high"], f"byl{j}_n": b["n"]})
    rows = [meta]
    for r in results:
        rows.append({"kind": "run", **key, "seed": r["seed"], "variant": r["variant"], "family": r["family"],
                     "acc": r["acc"], "val_acc": r["val_acc"], "skewness": r["skewness"], "ood_mean": r["ood_mean"],
                     **{f"ood:{k}": v for k, v in r["sections"].items()},
                     **{f"byl{j}": b["acc"] for j, b in enumerate(r.get("by_label", []))},
                     "train_seconds": round(r["train_seconds"], 2), "test_correct": encode_outcomes(r["test_correct"])})
    tune = task_dir / "tune_head.json"  # `--tune-head`'s grid (written beside the study by the same --out)
    for t in json.loads(tune.read_text()) if tune.exists() else []:
        rows += [{"kind": "tune", **key, "seed": int(seed), "head_lr": t["head_lr"], "head_epochs": t["head_epochs"],
                  "val_acc": acc} for seed, acc in t["seed_val_accs"].items()]
    bt = {r["seed"]: r for r in bon if r["variant"] == "bt"}
    for r in bon:
        for j, n in enumerate(r["ns"]):
            row = {"kind": "bon", **key, "seed": r["seed"], "variant": r["variant"], "n": n, "gold": r["gold"][j],
                   "lc_gold": r["lc_gold"][j], "agree_longest": r["agree_longest"][j],
                   "judge_best": r["judge_best"][j]}
            if r["variant"] != "bt":  # outcome of this pick against BT's, per instruction (ties 1/2)
                base = bt[r["seed"]]
                for col, gold in (("win_outcomes", "pick_gold"), ("lc_win_outcomes", "pick_lc_gold")):
                    row[col] = encode_outcomes(pair_outcomes(np.subtract(r[gold][j], base[gold][j])))
            rows.append(row)
    return rows


def export_rows(study_dir: str | Path, dest: str | Path) -> Path:
    """Every task folder of a `marginkit study margins --task all` output (STUDY/<task>/summary.json) as one
    committed rows file (`write_rows`)."""
    from marginkit.study.render import write_rows

    dirs = sorted(p.parent for p in Path(study_dir).glob("*/summary.json"))
    if not dirs:
        raise FileNotFoundError(f"{study_dir}: no <task>/summary.json (run `marginkit study margins --task all` first)")
    return write_rows(dest, [row for d in dirs for row in flat_rows(d)])


def study_summaries(rows: list[dict[str, Any]], n_boot: int = 2000) -> list[dict[str, Any]]:
    """One `summarize_real` summary per (task, backbone) of the flat rows, in the rows' order, with the config,
    sizes, about and length baseline `format_real_markdown` prints."""
    out = []
    for meta in (r for r in rows if r["kind"] == "task"):
        mine = [r for r in rows if r["task"] == meta["task"] and r["backbone"] == meta["backbone"]]
        runs = [_run(r, meta) for r in mine if r["kind"] == "run"]
        summary = summarize_real(runs, _bon(mine), n_boot=n_boot)
        summary.update(config={"task": meta["task"], "backbone": meta["backbone"]}, about=meta["about"] or "",
                       sizes={"train": meta["n_train"], "validation": meta["n_val"], "test": meta["n_test"],
                              "pool": meta["n_pool"], "sections": _prefixed(meta, "size:")},
                       length_baseline=_prefixed(meta, "len:"))
        out.append(summary)
    return out


def _prefixed(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v is not None}


def _run(r: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    run = {k: r[k] for k in ("seed", "variant", "family", "acc", "val_acc", "skewness", "ood_mean", "train_seconds")}
    run["sections"] = _prefixed(r, "ood:")
    run["test_correct"] = decode_outcomes(r["test_correct"])
    buckets = sorted(int(k[3:]) for k in r if k.startswith("byl") and k[3:].isdigit() and r[k] is not None)
    if buckets:
        run["by_label"] = [{"low": meta[f"byl{j}_low"], "high": meta[f"byl{j}_high"], "n": meta[f"byl{j}_n"],
                            "acc": r[f"byl{j}"]} for j in buckets]
    return run


def _bon(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-(seed, variant) Best-of-N rows summarize_real reads, lists over N rebuilt from one row per N."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for r in (r for r in rows if r["kind"] == "bon"):
        e = out.setdefault((r["seed"], r["variant"]), {
            "seed": r["seed"], "variant": r["variant"], "ns": [], "win": None, "lc_win": None, "pick_chars": None,
            **{m: [] for m in ("gold", "lc_gold", "agree_longest", "judge_best", "win_outcomes", "lc_win_outcomes")}})
        e["ns"].append(r["n"])
        for m in ("gold", "lc_gold", "agree_longest"):
            e[m].append(r[m])
        e["judge_best"].append(r["judge_best"])
        for m in ("win_outcomes", "lc_win_outcomes"):
            e[m].append(None if r.get(m) is None else decode_outcomes(r[m]))
    for e in out.values():
        for m in ("win_outcomes", "lc_win_outcomes"):
            if any(v is None for v in e[m]):
                e[m] = None
    return list(out.values())


def format_tune_table(rows: list[dict[str, Any]]) -> str:
    """The `--tune-head` table: per task, the grid's best (lr, epochs) by mean validation accuracy over seeds, its
    mean [95% t over seeds], and the range of the grid's means ("" when the rows hold no grid)."""
    from marginkit.evaluate.stats import format_interval, t_interval

    tune = [r for r in rows if r["kind"] == "tune"]
    if not tune:
        return ""
    lines = ["| task | best (lr, epochs) | its val acc | the grid's range of val acc | grid | seeds |",
             "|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in tune):
        cells: dict[tuple[float, int], list[float]] = {}
        for r in (r for r in tune if r["task"] == task):
            cells.setdefault((r["head_lr"], r["head_epochs"]), []).append(r["val_acc"])
        stats = {k: t_interval(v) for k, v in cells.items()}
        best = max(stats, key=lambda k: stats[k][0])  # ties: the first in grid order, as tune_head's sort
        means = [m for m, _, _ in stats.values()]
        lrs = sorted({k[0] for k in cells})
        eps = sorted({k[1] for k in cells})
        seeds = sorted({r["seed"] for r in tune if r["task"] == task})
        lines.append(f"| {task} | {best[0]:g}, {best[1]} | {format_interval(stats[best])} | {min(means):.3f} - "
                     f"{max(means):.3f} | lr {{{', '.join(f'{x:g}' for x in lrs)}}} x epochs "
                     f"{{{', '.join(map(str, eps))}}} | {', '.join(map(str, seeds))} |")
    return "\n".join(lines) + "\n"
