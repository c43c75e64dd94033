"""One reward-model training step: forward -> rewards -> margins -> BT loss -> metrics.

Read top to bottom; the engine (train/engine.py) does backward, accumulation and logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from marginkit.losses import bt_loss, centering_penalty
from marginkit.margins import MarginInputs, Margins, MarginStrategy, check_margin_shape
from marginkit.models.pair_forward import score_pairs

__all__ = ["StepOutput", "rm_step", "target_margins"]


@dataclass
class StepOutput:
    """loss_sum: sum over the micro-batch's pairs (with grad; the engine normalises).
    terms: per-pair detached loss terms [B] (to name the culprit of a NaN).
    stats: metric sums over pairs (detached), keyed by metric name, plus "count"."""

    loss_sum: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


def target_margins(
    margin_fn: MarginStrategy,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    batch: dict[str, torch.Tensor],
    step: int,
    emb_c: torch.Tensor | None = None,
    emb_r: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Margins]:
    """The strategy's target margin m [B] for rewards chosen/rejected [B] (detached; inactive pairs get 0,
    i.e. plain BT) and the strategy's raw output. `batch` holds label_margin, score_gap, gold_gap [B] and
    optionally index [B]. Shared by rm_step and the real-data study's frozen-feature head."""
    reward_gap = (chosen - rejected).detach()  # [B]
    margins = margin_fn(MarginInputs(reward_gap, batch["label_margin"], batch["score_gap"], batch["gold_gap"],
                                     step, emb_c, emb_r, batch.get("index")))
    check_margin_shape(margins.target_margin, reward_gap, type(margin_fn).__name__)
    return torch.where(margins.active, margins.target_margin, 0.0).detach(), margins


def rm_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    margin_fn: MarginStrategy,
    step: int,
    center_coef: float = 0.0,
) -> StepOutput:
    """Bradley-Terry step with a target margin on one micro-batch of B pairs ([2B, T] tokens)."""
    with_hidden = "embeddings" in margin_fn.needs
    rewards, hidden = score_pairs(model, batch, with_hidden)  # [2B]; padded, packed or prefix-shared forward
    chosen, rejected = rewards.chunk(2)  # [2B] -> [B], [B]
    reward_gap = (chosen - rejected).detach()  # [B]
    emb_c, emb_r = hidden.chunk(2) if hidden is not None else (None, None)  # [2B, D] -> [B, D] x 2
    target_margin, margins = target_margins(margin_fn, chosen, rejected, batch, step, emb_c, emb_r)  # [B]
    bt = bt_loss(chosen, rejected, target_margin).losses  # [B]
    center = center_coef * centering_penalty(chosen, rejected) if center_coef else torch.zeros_like(bt)  # [B]
    per_pair_loss = bt + center  # [B]

    with torch.no_grad():
        active = margins.active.float()
        # Quantiles of this micro-batch's margins (one process's share), times its pairs: the engine's
        # sum/count then logs their pair-weighted mean over micro-batches (docs/metrics.md).
        levels = torch.tensor([0.1, 0.5, 0.9], device=bt.device)
        q10, q50, q90 = torch.quantile(target_margin.float(), levels) * len(bt)  # [3] -> 3 scalars
        stats = {
            "loss": per_pair_loss.detach().sum(),
            "rewards/chosen": chosen.detach().sum(),
            "rewards/rejected": rejected.detach().sum(),
            "rewards/margins": reward_gap.sum(),
            "rewards/accuracies": (reward_gap > 0).float().sum(),
            "target_margins/mean": target_margin.sum(),
            "target_margins/sq": (target_margin**2).sum(),
            "target_margins/active_fraction": active.sum(),
            "target_margins/microbatch_p10": q10,
            "target_margins/microbatch_p50": q50,
            "target_margins/microbatch_p90": q90,
            "target_margins/filtered_fraction": (1.0 - active).sum(),
            "diagnostics/margin_exceeds_gap": ((target_margin > reward_gap) & margins.active).float().sum(),
            "diagnostics/loss_at_zero_gap": torch.nn.functional.softplus(target_margin.float()).sum(),
            "count": torch.tensor(float(len(bt)), device=bt.device),
        }
        for name, value in margins.diagnostics.items():
            stats[f"target_margins/{name}"] = value.float().sum() if value.dim() else value.float() * len(bt)
    terms = {"bt": bt.detach(), "center": center.detach(), "rewards/chosen": chosen.detach(),
             "rewards/rejected": rejected.detach()}
    return StepOutput(per_pair_loss.sum(), terms, stats)
