"""One DPO-family training step: forward -> response log-probs -> reference log-probs -> offsets -> loss -> metrics.

Read top to bottom; the engine (train/engine.py) does backward, accumulation and logging. The loss,
the reference source and the offset strategy are chosen once at setup (train/dpo.py).
"""

from __future__ import annotations

import torch
from torch import nn

from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.losses.dpo import DPOLoss, PreferenceLogps, chosen_nll
from marginkit.margins import MarginInputs, MarginStrategy, target_margins
from marginkit.models.pair_forward import batch_logps
from marginkit.models.ref_cache import ReferenceSource
from marginkit.train.engine import StepOutput

__all__ = ["dpo_step"]


def dpo_step(model: nn.Module, batch: dict[str, torch.Tensor], step: int, loss_fn: DPOLoss,
             reference: ReferenceSource, margin_fn: MarginStrategy | None = None, nll_weight: float = 0.0,
             chunk_size: int | None = None) -> StepOutput:
    """A DPO-family loss on one micro-batch of B pairs ([2B, T] tokens, chosen rows then rejected rows)."""
    policy = batch_logps(model, batch, chunk_size)  # [2B] summed response log-probs, token counts
    chosen, rejected = policy.split()  # [2B] -> [B], [B]
    ref = reference(batch)  # ([B], [B]) summed reference log-probs, or None (reference-free)
    ref_c, ref_r = ref if ref is not None else (torch.zeros_like(chosen.sum), torch.zeros_like(rejected.sum))
    raw_gap = ((chosen.sum - ref_c) - (rejected.sum - ref_r)).detach()  # [B] h, unscaled
    # ODPO's offsets from the margin strategy, on the scaled gap β h: m [B] (0 where inactive), active [B]
    margins = (target_margins(margin_fn, MarginInputs.from_batch(loss_fn.beta * raw_gap, batch, step))
               if margin_fn is not None else None)
    target_margin = margins.target_margin if margins is not None else None  # [B] or None
    logps = PreferenceLogps(chosen.sum, rejected.sum, ref_c if ref is not None else None,
                            ref_r if ref is not None else None, chosen.n_tokens, rejected.n_tokens)
    out = loss_fn(logps, target_margin)  # losses [B] with grad, rewards [B] detached
    pair_weight = out.extras.get("pair_weight", torch.ones_like(out.losses))  # [B]; β-DPO's filter
    nll = chosen_nll(chosen.sum, chosen.n_tokens)  # [B]
    per_pair_loss = pair_weight * out.losses + nll_weight * nll  # [B]

    with torch.no_grad():
        reward_gap = out.chosen_rewards - out.rejected_rewards  # [B]
        n = torch.tensor(float(len(out.losses)), device=out.losses.device)
        stats = {
            "loss": per_pair_loss.detach().sum(),
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/margins": reward_gap.sum(),
            "rewards/accuracies": pair_outcomes(reward_gap).sum(),  # ties count 1/2 (evaluate/accuracy.py)
            "logps/chosen": chosen.sum.detach().sum(),
            "logps/rejected": rejected.sum.detach().sum(),
            "logratios/gap_raw": raw_gap.sum(),
            "count": n,
        }
        if ref is not None:  # mean over both responses of log π_ref - log π_θ (docs/dpo.md)
            stats["kl/implicit"] = 0.5 * ((ref_c - chosen.sum) + (ref_r - rejected.sum)).detach().sum()
        zero = loss_fn.loss_at_zero_gap(out.losses, target_margin)  # [B] or None (SimPO)
        if zero is not None:
            stats["diagnostics/loss_at_zero_gap"] = (pair_weight * zero + nll_weight * nll.detach()).sum()
        if nll_weight:
            stats["nll/chosen"] = nll.detach().sum()
        if margins is not None:
            stats["target_margins/mean"] = target_margin.sum()
            stats["target_margins/sq"] = (target_margin ** 2).sum()
            stats["target_margins/active_fraction"] = margins.active.float().sum()
        if "beta" in out.extras:
            stats["beta/effective"] = out.extras["beta"].sum()
            stats["beta/reference_margin"] = out.extras["reference_margin"].sum()
            stats["beta/selected_fraction"] = out.extras["selected"].sum()
    terms = {"dpo": out.losses.detach(), "nll": nll.detach(), "rewards/chosen": out.chosen_rewards,
             "rewards/rejected": out.rejected_rewards}
    return StepOutput(per_pair_loss.sum(), terms, stats)
