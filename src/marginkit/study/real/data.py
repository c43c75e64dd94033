"""The real tasks' pairs: HH-RLHF, UltraFeedback and AlpacaEval loaded and split, the OOD sections sampled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginkit.data.schema import Pair
from marginkit.study.real.config import RealStudyConfig, default_data_dir

__all__ = ["TaskData", "load_task", "load_sections", "label_gaps", "pair_tensors"]


@dataclass
class TaskData:
    name: str
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    graded: bool
    pool: Any = None  # JudgedPool of held-out instructions (alpaca-eval): the offline Best-of-N
    notes: list[str] = field(default_factory=list)  # what was skipped or capped, and the split sizes


def _sample(items: list[Any], cap: int, seed: int) -> list[Any]:
    """The first `cap` of a seeded permutation, in their original order (all when cap is 0 or larger)."""
    if not cap or len(items) <= cap:
        return items
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:cap])
    return [items[i] for i in keep]


def load_task(cfg: RealStudyConfig) -> TaskData:
    """The task's train / validation / test pairs (and pool), every skipped row counted in `notes`."""
    from marginkit.data.load import load_pairs
    from marginkit.data.splits import SplitConfig, split_pairs

    data = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    notes: list[str] = []
    if cfg.task == "hh":
        path = data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
        pairs, ledger = load_pairs(path, on_invalid="skip")
        notes.append(f"{path}: {ledger.summary()}")
        split = split_pairs(pairs, SplitConfig(seed=cfg.split_seed, group_by="first_user_turn"))
        train, val, test = (split.pairs[k] for k in ("train", "validation", "test"))
        notes.append(f"split by first user turn: {split.report.summary()}")
        out = TaskData("hh", train, val, test, graded=False)
    elif cfg.task == "ultrafeedback":
        root = data / "ultrafeedback-binarized-1k2"
        pairs, ledger = load_pairs(root / "train_clean.jsonl.gz", on_invalid="skip")
        test, ledger_t = load_pairs(root / "eval_clean.jsonl.gz", on_invalid="skip")
        notes += [f"{root / 'train_clean.jsonl.gz'}: {ledger.summary()}", f"{root / 'eval_clean.jsonl.gz'}: "
                  f"{ledger_t.summary()}"]
        split = split_pairs(pairs, SplitConfig(fractions=(0.9, 0.1), names=("train", "validation"), seed=cfg.split_seed))
        train, val = split.pairs["train"], split.pairs["validation"]
        notes.append(f"train file split by prompt: {split.report.summary()}; test = the eval file")
        out = TaskData("ultrafeedback", train, val, test, graded=True)
    elif cfg.task == "alpaca-eval":
        from marginkit.evaluate.offline_bon import alpaca_eval_files, load_alpaca_pool, pool_pairs, split_pool

        pool = load_alpaca_pool(alpaca_eval_files(data))
        parts, report = split_pool(pool, SplitConfig(seed=cfg.split_seed))
        notes.append(f"AlpacaEval pool: {len(pool)} instructions x {pool.k} responses ({pool.empty_responses} empty, "
                     f"kept); split by instruction: {report.summary()}")
        made = {}
        for name in ("train", "validation", "test"):
            made[name], ledger = pool_pairs(parts[name])
            notes.append(f"{name} pairs: {ledger.summary()}")
        out = TaskData("alpaca-eval", made["train"], made["validation"], made["test"], graded=True, pool=parts["test"])
    else:  # guarded by RealStudyConfig
        raise ValueError(cfg.task)
    if cfg.max_train_pairs and len(out.train) > cfg.max_train_pairs:
        notes.append(f"training pairs capped at {cfg.max_train_pairs} of {len(out.train)} (seeded sample, "
                     f"seed {cfg.split_seed})")
        out.train = _sample(out.train, cfg.max_train_pairs, cfg.split_seed)
    out.notes = notes
    return out


def load_sections(cfg: RealStudyConfig) -> list[Any]:
    """The OOD sections, each capped at max_section_pairs by a seeded sample (the same for every run)."""
    from marginkit.evaluate.sections import Section, builtin_sections

    data = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    out = []
    for s in builtin_sections(data, cfg.sections):
        pairs = _sample(s.pairs, cfg.max_section_pairs, cfg.split_seed)
        out.append(Section(s.name, pairs, s.source, s.ledger, s.description + (
            f" (a seeded sample of {len(pairs)} of {len(s.pairs)} pairs)" if len(pairs) < len(s.pairs) else "")))
    return out


def label_gaps(pairs: Sequence[Pair]) -> np.ndarray:
    return np.array([p.score_gap for p in pairs], dtype=np.float64)


def pair_tensors(pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    nan = float("nan")
    return {"label_margin": torch.tensor([p.margin if p.margin is not None else nan for p in pairs]),
            "score_gap": torch.tensor([p.score_gap for p in pairs]),
            "gold_gap": torch.tensor([p.gold_gap for p in pairs])}
