"""Pairwise accuracy, the one definition every metric in marginkit uses: ties count one half.

A pair's outcome is 1 when the chosen response scores higher (Δ = r_c - r_r > 0), 1/2 on an exact
tie (Δ = 0) and 0 otherwise; accuracy is the mean outcome. The half for ties makes a model that
cannot tell the two responses apart read 0.5 (chance), which is what a zero-initialised head or a
policy equal to its reference gives at step 0. TRL's `rewards/accuracies` counts ties as 0 instead
(it reads 0.0 at initialisation); the two differ only on exact ties. docs/metrics.md names this rule.

Used by RM and DPO training (`rewards/accuracies`, summed over micro-batches), RM and DPO evaluation,
the studies, the out-of-distribution sections and Best-of-N win rates (a win rate is the same rule
applied to the difference of the two picks' gold scores).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["gold_oriented_gap", "pair_outcomes", "pairwise_accuracy"]

GapT = TypeVar("GapT", torch.Tensor, np.ndarray)


def pair_outcomes(reward_gap: GapT) -> GapT:
    """Per-pair outcome 1 (Δ > 0), 1/2 (Δ = 0) or 0 (Δ < 0). reward_gap: [B] tensor or array.

    Returns the same kind as the input: a float tensor (the gap's dtype when floating, else float32)
    on the same device, or a float64 array. NaN gaps give 0 (neither > 0 nor == 0).
    Example: Δ = [1, -2, 0, 3] -> [1, 0, 0.5, 1].
    """
    if isinstance(reward_gap, torch.Tensor):
        dtype = reward_gap.dtype if reward_gap.is_floating_point() else torch.float32
        return (reward_gap > 0).to(dtype) + 0.5 * (reward_gap == 0).to(dtype)
    gap = np.asarray(reward_gap, dtype=np.float64)
    return (gap > 0).astype(np.float64) + 0.5 * (gap == 0)


def pairwise_accuracy(reward_gap: torch.Tensor | np.ndarray) -> float:
    """Mean pair outcome: (#{Δ > 0} + ½ #{Δ = 0}) / B. reward_gap: [B], B >= 1.

    Example: Δ = [1, -2, 0, 3] gives (2 + ½) / 4 = 0.625; accuracy(Δ) + accuracy(-Δ) = 1.
    """
    outcomes = pair_outcomes(reward_gap)
    if outcomes.ndim != 1 or outcomes.shape[0] == 0:
        raise ValueError(f"pairwise_accuracy: reward_gap must be a non-empty [B] vector; got shape {tuple(outcomes.shape)}")
    return float(outcomes.mean())


def gold_oriented_gap(reward_gap: np.ndarray, gold_gap: np.ndarray) -> np.ndarray:
    """Δ · sign(Δ*) over the pairs with a known, non-zero true gap Δ* [B] (gold-reward worlds). Returns [B'].

    Accuracy against the true preference is the same rule on this gap: positive where the model agrees
    with the truth, 0 on a model tie (counts 1/2). Pairs with Δ* = 0 (no true preference) or NaN (no gold
    reward) are left out. Example: Δ = [1, -2, 0, 3], Δ* = [-1, -1, 2, 0] -> [-1, 2, 0].
    """
    gap, gold = np.asarray(reward_gap, dtype=np.float64), np.asarray(gold_gap, dtype=np.float64)
    if gap.shape != gold.shape or gap.ndim != 1:
        raise ValueError(f"gold_oriented_gap: reward_gap and gold_gap must both be [B]; got {gap.shape}, {gold.shape}")
    known = np.isfinite(gold) & (gold != 0)
    return gap[known] * np.sign(gold[known])
