"""The real study's Best-of-N section: each variant's picks among held-out AlpacaEval candidates, per seed."""

from __future__ import annotations

from typing import Any

import numpy as np

from marginkit.study.real.runs import RunContext

__all__ = ["bon_rows"]


def bon_rows(ctx: RunContext, seed: int, pools: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Offline Best-of-N of every variant of one seed on the held-out pool (baseline BT, order seed = seed)."""
    from marginkit.evaluate.offline_bon import (
        candidate_orders,
        in_order,
        length_controlled,
        offline_best_of_n,
    )

    pool = ctx.data.pool
    if pool is None or "bt" not in pools:
        return []
    names = ["bt"] + [n for n in pools if n != "bt"]
    res = offline_best_of_n({n: pools[n] for n in names}, pool.gold, pool.lengths(), seed=seed, baseline="bt",
                            n_boot=ctx.cfg.n_boot)
    # per instruction, the judge's gold (raw and length-controlled) of each pick: the summary's paired
    # bootstrap over instructions needs them (the same order and tie rule as offline_best_of_n)
    order = candidate_orders(len(pool), pool.k, seed)
    gold_o = in_order(pool.gold, order)
    lc_o = in_order(length_controlled(pool.gold, pool.lengths(), res.slope), order)
    rows_i = np.arange(len(pool))
    scored = {**{n: in_order(pools[n], order) for n in names}, "longest": in_order(pool.lengths(), order)}
    picks = {n: [np.argmax(sc[:, :k], axis=1) for k in res.ns] for n, sc in scored.items()}
    rows = []
    for name in names + ["longest"]:
        win, win_lc = res.raw.win_rates.get(name), res.lc.win_rates.get(name)
        rows.append({"task": ctx.cfg.task, "backbone": ctx.cfg.backbone, "seed": seed, "variant": name, "ns": res.ns,
                     "gold": [m.mean for m in res.raw.per_rm[name]["judge"]],
                     "lc_gold": [m.mean for m in res.lc.per_rm[name]["judge"]],
                     "win": [w.value for w in win] if win else None, "lc_win": [w.value for w in win_lc] if win_lc
                     else None, "agree_longest": res.agree_longest[name], "pick_chars": res.pick_chars[name],
                     "judge_best": list(res.raw.reference["judge_best"]), "slope": res.slope,
                     "pick_gold": [gold_o[rows_i, p].tolist() for p in picks[name]],
                     "pick_lc_gold": [lc_o[rows_i, p].tolist() for p in picks[name]]})
    return rows
