"""One reward-model training step: forward -> rewards -> margins -> BT loss -> metrics.

Read top to bottom; the engine (train/engine.py) does backward, accumulation and logging.
"""

from __future__ import annotations

import torch
from torch import nn

from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.losses import bt_loss, centering_penalty
from marginkit.margins import MarginInputs, MarginStrategy, target_margins
from marginkit.models.pair_forward import score_pairs
from marginkit.train.engine import StepOutput

__all__ = ["rm_step"]


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
    margins = target_margins(margin_fn, MarginInputs.from_batch(reward_gap, batch, step, emb_c, emb_r))
    target_margin = margins.target_margin  # [B], detached, 0 on inactive pairs
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
            "rewards/accuracies": pair_outcomes(reward_gap).sum(),  # ties count 1/2 (evaluate/accuracy.py)
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
        stats.update(_diagnostic_sums(margins.diagnostics, len(bt), stats))
    terms = {"bt": bt.detach(), "center": center.detach(), "rewards/chosen": chosen.detach(),
             "rewards/rejected": rejected.detach()}
    return StepOutput(per_pair_loss.sum(), terms, stats)


def _diagnostic_sums(diagnostics: dict[str, torch.Tensor], n: int, taken: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """A strategy's diagnostics as sums over the n pairs under `target_margins/<name>` (a [B] value is summed,
    a scalar counts once per pair). A name the step already logs raises: each metric is written once."""
    sums = {f"target_margins/{k}": v.float().sum() if v.dim() else v.float() * n for k, v in diagnostics.items()}
    clash = sorted(sums.keys() & taken.keys())
    if clash:
        raise ValueError(f"margin diagnostics {clash} would overwrite the step's own metrics of the same name; "
                         "rename them in the strategy")
    return sums
