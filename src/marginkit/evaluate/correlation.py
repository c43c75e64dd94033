"""Correlation of per-pair quantities: Pearson r, and Spearman's rank correlation with average ranks for
ties (both as scipy computes them; None where undefined)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate.arrays import same_length, vector

__all__ = ["pearson", "spearman"]


def pearson(x: ArrayLike, y: ArrayLike) -> float | None:
    """Pearson correlation r = Σ(x-x̄)(y-ȳ) / sqrt(Σ(x-x̄)² Σ(y-ȳ)²). x, y: [B].

    Returns None when either array is constant (r undefined). Clipped to [-1, 1] against rounding.
    """
    a, b = vector("x", x), vector("y", y)
    same_length(x=a, y=b)
    da, db = a - a.mean(), b - b.mean()
    ss = float(np.sum(da * da)) * float(np.sum(db * db))
    if ss == 0.0:
        return None
    return float(np.clip(np.sum(da * db) / np.sqrt(ss), -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..B of x [B], tied values sharing the average of their ranks (scipy's 'average')."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Group boundaries between runs of equal values.
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [x.size]])
    mean_rank = (starts + 1 + ends) / 2.0  # average of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float | None:
    """Spearman rank correlation: Pearson r of the average ranks of x and y [B]. None if undefined."""
    a, b = vector("x", x), vector("y", y)
    same_length(x=a, y=b)
    return pearson(_average_ranks(a), _average_ranks(b))
