"""The real study's summary: t-intervals over seeds, paired differences to BT, bootstraps over pairs and prompts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.evaluate.stats import t_interval

__all__ = ["summarize_real", "paired_pair_bootstrap", "win_bootstrap", "outcome_bootstrap"]


def paired_pair_bootstrap(rows: list[dict[str, Any]], bt_rows: list[dict[str, Any]], n_boot: int,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """The test-set side of "vs BT": d_j = mean over seeds of (correct_variant - correct_BT) on test pair j,
    and a percentile bootstrap over test pairs of mean_j d_j (seeds are matched; (nan,)*3 without data).
    The t-interval over seeds says how much training noise moves the result; this says how much the
    choice of test pairs does."""
    if not rows or len(rows) != len(bt_rows) or any("test_correct" not in r for r in rows + bt_rows):
        return math.nan, math.nan, math.nan
    d = (np.array([r["test_correct"] for r in rows]) - np.array([r["test_correct"] for r in bt_rows])).mean(0)  # [P]
    rng = np.random.default_rng(seed)
    reps = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(low), float(high)


def win_bootstrap(gold_a: list[list[float]], gold_b: list[list[float]], n_boot: int, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Win rate of A's picks over B's [seeds x instructions] (1 if A's gold is higher, 1/2 tie, 0 lower),
    averaged over seeds per instruction, with a percentile bootstrap over instructions."""
    a, b = np.asarray(gold_a, dtype=np.float64), np.asarray(gold_b, dtype=np.float64)
    return outcome_bootstrap(pair_outcomes(a - b), n_boot, level, seed)  # the accuracy rule on the difference


def outcome_bootstrap(outcomes: list[list[float]], n_boot: int, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """`win_bootstrap` from the per-instruction outcomes [seeds x instructions] (1 win, 1/2 tie, 0 loss):
    averaged over seeds per instruction, percentile bootstrap over instructions."""
    w = np.asarray(outcomes, dtype=np.float64).mean(0)  # [S, I] -> [I]
    rng = np.random.default_rng(seed)
    reps = w[rng.integers(0, len(w), size=(n_boot, len(w)))].mean(1)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(w.mean()), float(low), float(high)


def summarize_real(rows: list[dict[str, Any]], bon: list[dict[str, Any]] | None = None,
                   n_boot: int = 2000) -> dict[str, Any]:
    """Per variant: t-intervals over seeds of test/val accuracy, paired difference to BT, skewness, each
    OOD section and their mean, accuracy per |label| quartile; per family the variant chosen on
    validation; the Best-of-N per variant and N (mean over seeds of gold, win rate vs BT, LC, = longest)."""
    by = {(r["seed"], r["variant"]): r for r in rows}
    order = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    table = []
    for name in order:
        mine = [by[(s, name)] for s in seeds if (s, name) in by]
        e: dict[str, Any] = {"variant": name, "family": mine[0]["family"], "n_seeds": len(mine)}
        for m in ("acc", "val_acc", "skewness", "ood_mean"):
            e[m] = t_interval([r[m] for r in mine])
        e["acc_vs_bt"] = t_interval([r["acc"] - by[(r["seed"], "bt")]["acc"] for r in mine if (r["seed"], "bt") in by])
        e["acc_vs_bt_pairs"] = paired_pair_bootstrap(mine, [by[(r["seed"], "bt")] for r in mine if (r["seed"], "bt")
                                                             in by], n_boot)
        e["ood_vs_bt"] = t_interval([r["ood_mean"] - by[(r["seed"], "bt")]["ood_mean"] for r in mine
                                     if (r["seed"], "bt") in by])
        e["sections"] = {k: t_interval([r["sections"][k] for r in mine]) for k in mine[0]["sections"]}
        if "by_label" in mine[0]:
            e["by_label"] = [{"low": b["low"], "high": b["high"], "n": b["n"],
                              "acc": t_interval([r["by_label"][j]["acc"] for r in mine])}
                             for j, b in enumerate(mine[0]["by_label"])]
        e["seconds"] = float(np.median([r["train_seconds"] for r in mine]))
        table.append(e)
    chosen = {}
    for family in dict.fromkeys(e["family"] for e in table):
        cands = [e for e in table if e["family"] == family]
        chosen[family] = max(cands, key=lambda e: e["val_acc"][0])["variant"]
    out: dict[str, Any] = {"variants": order, "seeds": seeds, "table": table, "chosen": chosen, "bon": []}
    for name in dict.fromkeys(r["variant"] for r in bon or []):
        mine = [r for r in bon or [] if r["variant"] == name]
        ns = mine[0]["ns"]
        ent: dict[str, Any] = {"variant": name, "ns": ns, "n_seeds": len(mine)}
        for m in ("gold", "lc_gold", "win", "lc_win", "agree_longest", "pick_chars", "judge_best"):
            if mine[0][m] is None:
                ent[m] = None
                continue
            ent[m] = [t_interval([r[m][j] for r in mine]) for j in range(len(ns))]
        bt = {r["seed"]: r for r in bon or [] if r["variant"] == "bt"}
        for key, gold, won in (("win_instr", "pick_gold", "win_outcomes"),
                               ("lc_win_instr", "pick_lc_gold", "lc_win_outcomes")):
            if name != "bt" and all(r.get(won) is not None for r in mine):  # committed rows carry the outcomes
                ent[key] = [outcome_bootstrap([r[won][j] for r in mine], n_boot) for j in range(len(ns))]
                continue
            ent[key] = None if name == "bt" or not all("pick_gold" in r and r["seed"] in bt for r in mine) else [
                win_bootstrap([r[gold][j] for r in mine], [bt[r["seed"]][gold][j] for r in mine], n_boot)
                for j in range(len(ns))]
        out["bon"].append(ent)
    return out
