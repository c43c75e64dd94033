"""Controls and checks on a reward model's gaps: the "longer wins" baseline and how rewards track length,
the swap test (scoring a pair the other way round must negate Δ), agreement with the true gaps of a
gold-reward world, and the worst-scored pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate import accuracy as _accuracy
from marginkit.evaluate.accuracy import gold_oriented_gap
from marginkit.evaluate.arrays import plain, same_length, vector
from marginkit.evaluate.correlation import pearson, spearman

__all__ = ["GoldAgreement", "LengthBaseline", "SwapTest", "gold_agreement", "length_baseline", "swap_test",
           "worst_pairs"]


@dataclass(frozen=True)
class LengthBaseline:
    """How much of the ranking length alone explains. Correlations are None when undefined."""

    accuracy_longer_wins: float
    corr_length_reward: float | None
    corr_length_gap: float | None
    n: int
    unit: str = "tokens"  # what the lengths count (eval-rm: characters of the untruncated response text)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class SwapTest:
    """Antisymmetry check: scoring (rejected, chosen) must give -Δ for every pair."""

    max_abs_sum: float  # max_i |Δ_i + Δ'_i|
    fraction_flipped: float  # fraction with sign(Δ'_i) == -sign(Δ_i)
    passed: bool  # max_abs_sum <= atol
    atol: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class GoldAgreement:
    """Agreement of estimated gaps with a known true gap. Undefined values are None."""

    accuracy_vs_true: float | None  # over pairs with gold gap != 0; estimated ties count 1/2
    pearson: float | None
    spearman: float | None
    n: int  # all pairs (correlations use all of them)
    n_gold_ties: int  # pairs with gold gap == 0, excluded from accuracy_vs_true

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def length_baseline(
    len_chosen: ArrayLike,
    len_rejected: ArrayLike,
    chosen_rewards: ArrayLike | None = None,
    rejected_rewards: ArrayLike | None = None,
    unit: str = "tokens",
) -> LengthBaseline:
    """The "longer response wins" baseline and how strongly rewards track length. All inputs: [B].

    accuracy_longer_wins = pairwise_accuracy(len_chosen - len_rejected) (equal lengths count ½).
    With rewards (both or neither):
      corr_length_reward = Pearson(concat(len_chosen, len_rejected), concat(r_c, r_r)) over 2B
        responses;
      corr_length_gap = Pearson(len_chosen - len_rejected, r_c - r_r) over B pairs.
    Without rewards both correlations are None; they are also None when an input is constant.
    Lengths are in whatever unit the caller uses, named by `unit` (eval-rm passes characters of the
    untruncated responses: token counts after truncation tie every pair cut to the same length).
    """
    lc, lr = vector("len_chosen", len_chosen), vector("len_rejected", len_rejected)
    same_length(len_chosen=lc, len_rejected=lr)
    accuracy = _accuracy.pairwise_accuracy(lc - lr)
    if (chosen_rewards is None) != (rejected_rewards is None):
        raise ValueError("pass both chosen_rewards and rejected_rewards, or neither")
    if chosen_rewards is None or rejected_rewards is None:
        return LengthBaseline(accuracy, None, None, n=int(lc.size), unit=unit)
    rc, rr = vector("chosen_rewards", chosen_rewards), vector("rejected_rewards", rejected_rewards)
    same_length(len_chosen=lc, chosen_rewards=rc, rejected_rewards=rr)
    return LengthBaseline(
        accuracy_longer_wins=accuracy,
        corr_length_reward=pearson(np.concatenate([lc, lr]), np.concatenate([rc, rr])),
        corr_length_gap=pearson(lc - lr, rc - rr),
        n=int(lc.size),
        unit=unit,
    )


def swap_test(reward_gap: ArrayLike, swapped_gap: ArrayLike, atol: float = 1e-4) -> SwapTest:
    """Check Δ'_i = -Δ_i, where Δ' [B] is the gap from scoring each pair as (rejected, chosen).

    A reward model scores responses independently, so Δ + Δ' must vanish; a non-zero sum means
    the pair leaks into a response's score (position, padding or batching bugs).
    passed = max_i |Δ_i + Δ'_i| <= atol. fraction_flipped counts sign(Δ'_i) == -sign(Δ_i)
    (a tie that stays a tie counts as flipped).
    """
    gap, swapped = vector("reward_gap", reward_gap), vector("swapped_gap", swapped_gap)
    same_length(reward_gap=gap, swapped_gap=swapped)
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol!r}")
    max_abs_sum = float(np.max(np.abs(gap + swapped)))
    return SwapTest(
        max_abs_sum=max_abs_sum,
        fraction_flipped=float(np.mean(np.sign(swapped) == -np.sign(gap))),
        passed=max_abs_sum <= atol,
        atol=float(atol),
        n=int(gap.size),
    )


def worst_pairs(reward_gap: ArrayLike, k: int = 10) -> np.ndarray:
    """Indices [min(k, B)] of the pairs with the most negative Δ, worst first (stable on ties)."""
    gap = vector("reward_gap", reward_gap)
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return np.argsort(gap, kind="stable")[: int(k)]


def gold_agreement(reward_gap: ArrayLike, gold_gap: ArrayLike) -> GoldAgreement:
    """Agreement of estimated gaps Δ [B] with the true gaps Δ* [B] of a synthetic world.

    accuracy_vs_true = (#{sign Δ = sign Δ*} + ½ #{Δ = 0}) / #{Δ* != 0}: pairs with Δ* = 0 have no
    true preference, so they are excluded and counted in n_gold_ties (None if all are ties).
    pearson and spearman (average ranks for ties) use all B pairs; None when a side is constant.
    """
    gap, gold = vector("reward_gap", reward_gap), vector("gold_gap", gold_gap)
    same_length(reward_gap=gap, gold_gap=gold)
    decided = gold != 0
    oriented = gold_oriented_gap(gap, gold)  # [#decided]
    accuracy = _accuracy.pairwise_accuracy(oriented) if oriented.size else None
    return GoldAgreement(
        accuracy_vs_true=accuracy,
        pearson=pearson(gap, gold),
        spearman=spearman(gap, gold),
        n=int(gap.size),
        n_gold_ties=int((~decided).sum()),
    )
