"""Accuracy over a set of pairs: the validated pairwise accuracy, a percentile-bootstrap interval over
pairs, and accuracy within quantile buckets of a per-pair key (near-ties vs clear wins, label strength).

Every accuracy is the one rule of evaluate/accuracy.py: a pair counts 1 when Δ = r_c - r_r > 0, 1/2 on a
tie, 0 otherwise (docs/metrics.md). The bootstrap is Efron's percentile interval over resampled pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate import accuracy as _accuracy
from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.evaluate.arrays import plain, positive_int, same_length, vector

__all__ = ["Bucket", "BucketedAccuracy", "Estimate", "accuracy_by_bucket", "accuracy_with_ci", "bootstrap_ci",
           "pairwise_accuracy"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap interval [low, high] at `level`, over n pairs."""

    value: float
    low: float
    high: float
    n: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class Bucket:
    """Pairs whose key lies in [lo, hi) (the last bucket is closed, [lo, hi]); accuracy over them."""

    lo: float
    hi: float
    n: int
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class BucketedAccuracy:
    """Accuracy per quantile bucket of a key. Iterates, indexes and has len() like a list of Buckets.

    Invariant: sum(b.n for b in buckets) + n_excluded == B (each pair counted exactly once).
    """

    buckets: tuple[Bucket, ...]
    n_excluded: int  # pairs whose key is NaN

    def __len__(self) -> int:
        return len(self.buckets)

    def __iter__(self) -> Iterator[Bucket]:
        return iter(self.buckets)

    def __getitem__(self, index: int) -> Bucket:
        return self.buckets[index]

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def pairwise_accuracy(reward_gap: ArrayLike) -> float:
    """Fraction of pairs ranked correctly: (#{Δ > 0} + ½ #{Δ = 0}) / B. reward_gap: [B].

    `evaluate.accuracy.pairwise_accuracy` after this module's input checks (1-D, non-empty, finite).

    Example: Δ = [1, -2, 0, 3] gives (2 + ½) / 4 = 0.625. accuracy(Δ) + accuracy(-Δ) = 1.
    """
    return _accuracy.pairwise_accuracy(vector("reward_gap", reward_gap))


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over pairs. values: [B] per-pair values.

    Draws `n_boot` resamples of B pairs with replacement from `np.random.default_rng(seed)`,
    evaluates `statistic` on each, and returns the (1-level)/2 and (1+level)/2 quantiles of those
    replicates. Deterministic given `seed`.
    """
    vals = vector("values", values)
    n_boot = positive_int("n_boot", n_boot)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot, dtype=np.float64)
    for i in range(n_boot):  # one resample at a time: memory stays O(B) for large eval sets
        replicates[i] = statistic(vals[rng.integers(0, vals.size, size=vals.size)])
    if not np.isfinite(replicates).all():
        raise ValueError("statistic returned a non-finite value on a bootstrap resample")
    alpha = 1.0 - level
    low, high = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def accuracy_with_ci(
    reward_gap: ArrayLike, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Pairwise accuracy (ties ½) with a percentile-bootstrap interval over pairs. reward_gap: [B]."""
    scores = pair_outcomes(vector("reward_gap", reward_gap))
    low, high = bootstrap_ci(scores, np.mean, n_boot=n_boot, level=level, seed=seed)
    return Estimate(value=float(scores.mean()), low=low, high=high, n=int(scores.size), level=float(level))


def _quantile_edges(key: np.ndarray, n_buckets: int) -> np.ndarray:
    """Strictly increasing bucket edges [K+1] from the quantiles of key [B'] (finite), K <= n_buckets.

    Tied quantiles collapse into one edge (fewer buckets). Linear interpolation can still leave a
    bucket with no pair between two distinct edges (e.g. key = [0, 10], 4 buckets); such a bucket
    is merged into the next one by dropping its upper edge, so every bucket is non-empty.
    """
    edges = np.unique(np.quantile(key, np.linspace(0.0, 1.0, n_buckets + 1)))
    if edges.size == 1:  # a single distinct key value: one closed bucket [v, v]
        return np.array([edges[0], edges[0]])
    counts = np.bincount(np.searchsorted(edges[1:-1], key, side="right"), minlength=edges.size - 1)
    keep_inner = counts[:-1] > 0  # inner edge i+1 is the upper edge of bucket i
    return np.concatenate([edges[:1], edges[1:-1][keep_inner], edges[-1:]])


def accuracy_by_bucket(
    reward_gap: ArrayLike, key: ArrayLike | None = None, n_buckets: int = 4
) -> BucketedAccuracy:
    """Pairwise accuracy within quantile buckets of a per-pair key. reward_gap, key: [B].

    key defaults to |Δ| (near-ties vs clear wins); pass a label margin or the true margin to bucket
    by preference strength instead. Edges are the 0, 1/K, ..., 1 quantiles of the non-NaN keys
    (numpy's linear interpolation); bucket i holds lo_i <= key < hi_i, the last one also key == hi.
    Tied edges give fewer buckets, never empty ones (see `_quantile_edges`). NaN keys are excluded
    and counted in `n_excluded`; every other pair is in exactly one bucket.

    Example: key = 1..8, K = 4: edges 1, 2.75, 4.5, 6.25, 8, buckets {1,2}, {3,4}, {5,6}, {7,8}.
    """
    gap = vector("reward_gap", reward_gap)
    keys = np.abs(gap) if key is None else vector("key", key, allow_nan=True)
    same_length(reward_gap=gap, key=keys)
    n_buckets = positive_int("n_buckets", n_buckets)
    valid = ~np.isnan(keys)
    n_excluded = int(gap.size - valid.sum())
    if n_excluded == gap.size:
        return BucketedAccuracy(buckets=(), n_excluded=n_excluded)
    gap, keys = gap[valid], keys[valid]
    edges = _quantile_edges(keys, n_buckets)
    index = np.searchsorted(edges[1:-1], keys, side="right")  # [B'] in 0..K-1
    buckets = tuple(
        Bucket(
            lo=float(edges[i]),
            hi=float(edges[i + 1]),
            n=int(np.sum(index == i)),
            accuracy=_accuracy.pairwise_accuracy(gap[index == i]),
        )
        for i in range(edges.size - 1)
    )
    return BucketedAccuracy(buckets=buckets, n_excluded=n_excluded)
