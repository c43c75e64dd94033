"""The frozen backbone's reward head: a two-layer MLP on cached features, trained with rm_step's margin step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from marginkit.data.schema import Pair
from marginkit.evaluate.accuracy import pairwise_accuracy
from marginkit.evaluate.stats import format_interval as _ci
from marginkit.evaluate.stats import t_interval
from marginkit.study.real.config import RealStudyConfig
from marginkit.study.real.data import TaskData, load_task, pair_tensors
from marginkit.study.real.features import FeatureCache

__all__ = ["RewardHead", "head_step", "train_head", "head_gaps", "accuracy", "tune_head"]


class RewardHead(nn.Module):
    """r(f) = w2 · gelu(W1 (f - μ) / σ + b1) + b2 over frozen features f; w2, b2 start at 0 (loss ln 2).
    μ, σ: the training features' mean and standard deviation (buffers). forward -> (rewards [M], hidden [M, H])."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp(min=1e-6).clone())
        self.body = nn.Sequential(nn.Linear(mean.numel(), hidden), nn.GELU())
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body((feats - self.mean) / self.std)  # [M, H]
        return self.out(h).squeeze(-1), h  # [M], [M, H]


def head_step(head: RewardHead, xc: torch.Tensor, xr: torch.Tensor, labels: dict[str, torch.Tensor],
              index: torch.Tensor, strategy: Any, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rm_step on a frozen-feature head: rewards -> the strategy's target margins (`margins.target_margins`,
    the margin call every trainer uses) -> BT loss (mean). Returns (loss, target margins [B])."""
    from marginkit.losses import bt_loss
    from marginkit.margins import MarginInputs, target_margins

    rewards, hidden = head(torch.cat([xc, xr]))  # [2B], [2B, H]
    chosen, rejected = rewards.chunk(2)  # [2B] -> [B], [B]
    emb_c, emb_r = hidden.detach().chunk(2)  # [2B, H] -> [B, H] x 2: OT's "hidden" embeddings
    inputs = MarginInputs.from_batch(chosen - rejected, {**labels, "index": index}, step, emb_c, emb_r)
    target = target_margins(strategy, inputs).target_margin  # [B], detached, 0 on inactive pairs
    return bt_loss(chosen, rejected, target).losses.mean(), target


def train_head(cfg: RealStudyConfig, xc: torch.Tensor, xr: torch.Tensor, pairs: Sequence[Pair], margin: dict[str, Any],
               seed: int, reference_gaps: torch.Tensor | None = None,
               val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[RewardHead, list[dict[str, float]]]:
    """Train a RewardHead on frozen features of N pairs (xc, xr [N, F]) with the margin `margin` (a MarginSpec
    dict). reference_gaps [K, N]: the BT heads' gaps for confidence source=reference/ensemble.
    Returns the head and its validation curve (accuracy after every epoch)."""
    from marginkit.configlib import from_dict
    from marginkit.margins import MarginSpec, build_margin

    torch.manual_seed(seed)
    strategy = build_margin(from_dict(MarginSpec, margin))
    if getattr(strategy, "model_dirs", None):
        if reference_gaps is None:
            raise ValueError(f"margin {margin}: needs reference gaps from BT heads")
        strategy.set_reference_gaps(reference_gaps, [f"head{k}" for k in range(len(reference_gaps))])
    feats = torch.cat([xc, xr])
    head = RewardHead(feats.mean(0), feats.std(0), cfg.head_hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.head_weight_decay)
    labels = pair_tensors(pairs)
    n, gen = len(pairs), torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / cfg.head_batch_size)
    total = steps_per_epoch * cfg.head_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 20))
                                              * max(0.0, (total - s) / total))
    curve, step = [], 0
    for _ in range(cfg.head_epochs):
        head.train()
        for idx in torch.randperm(n, generator=gen).split(cfg.head_batch_size):
            loss, _ = head_step(head, xc[idx], xr[idx], {k: v[idx] for k, v in labels.items()}, idx, strategy, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"frozen head: loss {loss.item()} at step {step} (margin {margin}, seed {seed})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if val is not None:
            curve.append({"step": step, "val_acc": accuracy(head_gaps(head, *val))})
    return head.eval(), curve


@torch.no_grad()
def head_gaps(head: RewardHead, xc: torch.Tensor, xr: torch.Tensor) -> np.ndarray:
    return (head(xc)[0] - head(xr)[0]).double().numpy()


def accuracy(gaps: np.ndarray) -> float:
    """Pairwise accuracy of gaps [B] (ties 1/2, evaluate/accuracy.py); NaN for no pairs."""
    return pairwise_accuracy(gaps) if len(gaps) else math.nan


def tune_head(cfg: RealStudyConfig, lrs: Sequence[float] = (3e-4, 1e-3, 3e-3), epochs: Sequence[int] = (2, 4, 8, 16),
              seeds: Sequence[int] = (0, 1, 2), say: Callable[[str], None] = print,
              data: TaskData | None = None) -> list[dict[str, Any]]:
    """The frozen head's learning rate and epochs for BT, chosen by mean *validation* accuracy over `seeds`
    (the test split is never scored). Returns one row per setting, best first; margins then share them."""
    from marginkit.models.pretrained import minilm_dir

    data = data if data is not None else load_task(cfg)
    cache = FeatureCache(Path(cfg.encoder) if cfg.encoder else minilm_dir(), cfg.max_length,
                         Path(cfg.out).parent / "cache", say=say)
    xc, xr = cache.pairs(data.train)
    val = cache.pairs(data.val)
    rows = []
    for lr in lrs:
        for n in epochs:
            trial = RealStudyConfig(**{**asdict(cfg), "head_lr": lr, "head_epochs": n})
            accs = [accuracy(head_gaps(train_head(trial, xc, xr, data.train, {"name": "none"}, s)[0], *val))
                    for s in seeds]
            rows.append({"head_lr": lr, "head_epochs": n, "val_acc": t_interval(accs),
                         "seed_val_accs": dict(zip(seeds, accs))})  # the raw rows docs/study_real.md commits
            say(f"{cfg.task} head lr {lr:g} epochs {n}: val acc {_ci(rows[-1]['val_acc'])}")
    return sorted(rows, key=lambda r: -r["val_acc"][0])
