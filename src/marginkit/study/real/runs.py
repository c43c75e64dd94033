"""One seed of the real study: every variant trained (frozen head or fine-tuned MiniLM) and evaluated."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.data.schema import Pair
from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.study.margins import StudyVariant, _fill
from marginkit.study.real.config import RealStudyConfig
from marginkit.study.real.data import TaskData, label_gaps
from marginkit.study.real.features import FeatureCache
from marginkit.study.real.head import RewardHead, accuracy, head_gaps, train_head

__all__ = ["RunContext", "evaluate_run", "finish_row", "frozen_unit", "finetune_unit", "finetune_one", "UNITS"]

Score = Callable[[list[Any], list[str]], np.ndarray]  # (prompts, responses) -> rewards [M]


@dataclass
class RunContext:
    cfg: RealStudyConfig
    data: TaskData
    sections: list[Any]
    encoder: Path
    cache: FeatureCache | None
    say: Callable[[str], None]


def evaluate_run(ctx: RunContext, gaps_of: Callable[[list[Pair]], np.ndarray], pool_scores: Callable[[], np.ndarray] | None
              ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics of one trained RM from its gap function: test accuracy (+ by |label| quartile), skewness,
    val accuracy, OOD sections and their mean; and its [I, K] pool rewards for the Best-of-N."""
    from marginkit.evaluate import metrics as M

    test = gaps_of(ctx.data.test)
    row: dict[str, Any] = {"acc": accuracy(test), "val_acc": accuracy(gaps_of(ctx.data.val)),
                           "skewness": M.skewness(test), "mean_gap": float(np.mean(test)),
                           "test_correct": pair_outcomes(test).tolist()}
    if ctx.data.graded:
        buckets = M.accuracy_by_bucket(test, np.abs(label_gaps(ctx.data.test)), 4)
        row["by_label"] = [{"low": b.lo, "high": b.hi, "acc": b.accuracy, "n": b.n} for b in buckets]
    row["sections"] = {s.name: accuracy(gaps_of(s.pairs)) for s in ctx.sections}
    row["ood_mean"] = float(np.mean(list(row["sections"].values()))) if row["sections"] else math.nan
    return row, (pool_scores() if pool_scores is not None else None)


def frozen_unit(ctx: RunContext, seed: int, todo: Sequence[StudyVariant]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg, data, cache = ctx.cfg, ctx.data, ctx.cache
    assert cache is not None
    xc, xr = cache.pairs(data.train)
    val = cache.pairs(data.val)
    bt_heads: dict[int, RewardHead] = {}

    def bt_head(k: int) -> RewardHead:  # the seed's BT head (k = 0) and its ensemble siblings
        if k not in bt_heads:
            bt_heads[k] = train_head(cfg, xc, xr, data.train, {"name": "none"}, seed + 1000 * k)[0]
        return bt_heads[k]

    # the held-out features, gathered once per seed rather than once per variant
    held_out = {id(pairs): cache.pairs(pairs) for pairs in [data.test, data.val] + [s.pairs for s in ctx.sections]}
    pool = data.pool
    pool_feats = None if pool is None else cache.get(
        [inst for inst, row in zip(pool.instructions, pool.responses) for _ in row],
        [r for row in pool.responses for r in row])

    def gaps_of(head: RewardHead) -> Callable[[list[Pair]], np.ndarray]:
        return lambda pairs: head_gaps(head, *held_out[id(pairs)])

    def pool_of(head: RewardHead) -> Callable[[], np.ndarray] | None:
        if pool is None:
            return None

        def scores() -> np.ndarray:
            with torch.no_grad():
                return head(pool_feats)[0].double().numpy().reshape(len(pool), pool.k)

        return scores

    rows, pools = [], {}
    for v in todo:
        ref = None
        if v.needs_reference:
            ref = torch.from_numpy(head_gaps(bt_head(0), xc, xr))[None]
        elif v.needs_ensemble:
            ref = torch.from_numpy(np.stack([head_gaps(bt_head(k), xc, xr) for k in range(cfg.ensemble_size)]))
        t0 = time.perf_counter()
        head, curve = train_head(cfg, xc, xr, data.train, _fill(v.margin, "head:bt", ["head:bt"] * 2), seed, ref, val)
        seconds = time.perf_counter() - t0
        if v.name == "bt":
            bt_heads.setdefault(0, head)
        row, pool_rewards = evaluate_run(ctx, gaps_of(head), pool_of(head))
        row.update(curve=curve, train_seconds=seconds)
        rows.append(finish_row(ctx, seed, v, row))
        if pool_rewards is not None:
            pools[v.name] = pool_rewards
    return rows, pools



def finetune_unit(ctx: RunContext, seed: int, todo: Sequence[StudyVariant]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from marginkit.evaluate.sections import rm_scorer, section_gaps

    cfg, data = ctx.cfg, ctx.data
    unit = Path(cfg.out) / f"seed{seed}"
    reference = unit / "bt" / "model"
    ensemble = [reference] + [unit / f"bt-seed{k}" / "model" for k in range(1, cfg.ensemble_size)]

    def need(path: Path, run_seed: int) -> None:
        if not (path / "config.json").exists():
            finetune_one(ctx, path.parent, run_seed, {"name": "none"})

    rows, pools = [], {}
    for v in todo:
        if v.needs_reference or v.needs_ensemble:
            need(reference, seed)
        if v.needs_ensemble:
            for k, path in enumerate(ensemble[1:], start=1):
                need(path, seed + 1000 * k)
        margin = _fill(v.margin, str(reference), [str(p) for p in ensemble])
        model_dir, curve, seconds = finetune_one(ctx, unit / v.name, seed, margin)
        score = rm_scorer(model_dir, 64, None)

        def pool_scores(score: Score = score) -> np.ndarray:
            pool = data.pool
            prompts = [inst for inst, row in zip(pool.instructions, pool.responses) for _ in row]
            return np.asarray(score(prompts, [r for row in pool.responses for r in row])).reshape(len(pool), pool.k)

        row, pool_rewards = evaluate_run(ctx, lambda pairs, score=score: section_gaps(score, pairs),
                                      pool_scores if data.pool is not None else None)
        row.update(curve=curve, train_seconds=seconds)
        rows.append(finish_row(ctx, seed, v, row))
        if pool_rewards is not None:
            pools[v.name] = pool_rewards
    return rows, pools



def finetune_one(ctx: RunContext, out: Path, seed: int, margin: dict[str, Any]) -> tuple[Path, list[dict[str, Any]], float]:
    from marginkit.config import RMRunConfig
    from marginkit.configlib import from_dict
    from marginkit.train.rm import train_reward_model

    cfg = ctx.cfg
    run_cfg = from_dict(RMRunConfig, {
        "model": {"name_or_path": str(ctx.encoder), "head_init": cfg.rm_head_init},
        "data": {"tokenize": {"max_length": cfg.max_length, "template": cfg.template}, "cache_dir": str(Path(cfg.out) / "cache")},
        "margin": margin,
        "train": {"output_dir": str(out), "seed": seed, "learning_rate": cfg.learning_rate,
                  "batch_size": cfg.batch_size, "num_epochs": cfg.epochs, "warmup_ratio": 0.1, "weight_decay": 0.01,
                  "log_every": 10, "eval_every": cfg.eval_every, "progress_bar": False, "save_every": 0,
                  "overwrite": True},  # a study remakes its run folders
    })
    t0 = time.perf_counter()
    result = train_reward_model(run_cfg, ctx.data.train, ctx.data.val, console=lambda s: None)
    curve = [{"step": h["step"], "val_acc": h["eval_rewards/accuracies"]}
             for h in result.history if "eval_rewards/accuracies" in h]
    return result.model_dir, curve, time.perf_counter() - t0



def finish_row(ctx: RunContext, seed: int, v: StudyVariant, row: dict[str, Any]) -> dict[str, Any]:
    row = {"task": ctx.cfg.task, "backbone": ctx.cfg.backbone, "seed": seed, "variant": v.name, "family": v.family,
           **row}
    secs = ", ".join(f"{k} {a:.3f}" for k, a in row["sections"].items())
    ctx.say(f"{ctx.cfg.task} seed {seed} {v.name:<15} test acc {row['acc']:.3f}  val {row['val_acc']:.3f}  "
            f"OOD mean {row['ood_mean']:.3f} ({secs})  skew {row['skewness']:+.2f}  ({row['train_seconds']:.1f} s)")
    return row



UNITS = {"frozen": frozen_unit, "finetune": finetune_unit}
