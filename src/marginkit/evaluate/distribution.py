"""The shape of the reward-gap distribution: moments (Fisher skewness as scipy computes it), quantiles,
and a histogram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate.arrays import plain, positive_int, vector

__all__ = ["Distribution", "gap_distribution", "skewness"]


@dataclass(frozen=True)
class Distribution:
    """Summary of the reward-gap distribution: moments, quantiles and a histogram."""

    n: int
    mean: float
    std: float  # population standard deviation (ddof = 0)
    skewness: float  # Fisher, biased (scipy.stats.skew default); 0.0 for a constant array
    p05: float
    p25: float
    p50: float
    p75: float
    p95: float
    hist_counts: tuple[int, ...]  # [bins]
    hist_edges: tuple[float, ...]  # [bins + 1]

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def skewness(x: ArrayLike) -> float:
    """Fisher skewness, biased: g1 = m3 / m2^{3/2}, with m_k = mean((x - mean(x))^k). x: [B].

    Matches `scipy.stats.skew(x)` (bias=True). A constant array (m2 == 0 up to rounding, with the
    threshold scipy uses) returns 0.0: a point mass is symmetric. Example: x = [0, 0, 3] has
    mean 1, m2 = 2, m3 = 2, so g1 = 2 / 2^{3/2} = 1/√2.
    """
    arr = vector("x", x)
    centred = arr - arr.mean()
    m2 = float(np.mean(centred**2))
    m3 = float(np.mean(centred**3))
    if m2 <= (np.finfo(np.float64).eps * arr.mean()) ** 2:
        return 0.0
    return m3 / m2**1.5


def gap_distribution(reward_gap: ArrayLike, bins: int = 30) -> Distribution:
    """Mean, population std, Fisher skewness, 5/25/50/75/95 % quantiles and histogram of Δ [B].

    Quantiles use numpy's linear interpolation; the histogram has `bins` equal-width bins over
    [min Δ, max Δ] (numpy.histogram).
    """
    gap = vector("reward_gap", reward_gap)
    bins = positive_int("bins", bins)
    p05, p25, p50, p75, p95 = np.quantile(gap, [0.05, 0.25, 0.5, 0.75, 0.95])
    counts, edges = np.histogram(gap, bins=bins)
    return Distribution(
        n=int(gap.size),
        mean=float(gap.mean()),
        std=float(gap.std()),
        skewness=skewness(gap),
        p05=float(p05),
        p25=float(p25),
        p50=float(p50),
        p75=float(p75),
        p95=float(p95),
        hist_counts=tuple(int(c) for c in counts),
        hist_edges=tuple(float(e) for e in edges),
    )
