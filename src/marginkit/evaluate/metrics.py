"""Pairwise evaluation metrics for reward models: accuracy, margin buckets, calibration, checks.

Pure numpy over per-pair arrays (no torch, no model). B = pairs. The main input is the reward
gap Δ = r_chosen - r_rejected [B]; a pair is ranked correctly when Δ > 0, and a tie (Δ == 0)
counts 1/2 (the expected accuracy of breaking the tie by a coin flip): the one rule of
evaluate/accuracy.py, which every accuracy here goes through.

Results are small frozen dataclasses; `.to_dict()` gives plain JSON-serialisable values
(floats, ints, bools, lists, None). `None` marks a value that is undefined for the input, such
as a Pearson correlation of a constant array.

Input policy: every array must be 1-D, non-empty and of equal length B across arguments, else a
ValueError shows the shapes. NaN or infinite inputs raise, except where a docstring says
otherwise (`accuracy_by_bucket` excludes and counts NaN keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate import accuracy as _accuracy
from marginkit.evaluate.accuracy import gold_oriented_gap, pair_outcomes

__all__ = [
    "Bucket",
    "BucketedAccuracy",
    "Calibration",
    "CalibrationBin",
    "Distribution",
    "Estimate",
    "GoldAgreement",
    "LengthBaseline",
    "SwapTest",
    "accuracy_by_bucket",
    "accuracy_with_ci",
    "bootstrap_ci",
    "calibration",
    "gap_distribution",
    "gold_agreement",
    "length_baseline",
    "pairwise_accuracy",
    "pearson",
    "sigmoid",
    "skewness",
    "spearman",
    "swap_test",
    "worst_pairs",
]


# ---------------------------------------------------------------------------------------------
# Validation and serialisation helpers


def _vector(name: str, x: ArrayLike, *, allow_nan: bool = False) -> np.ndarray:
    """`x` as a float64 [B] array; raises ValueError on a wrong shape, emptiness or non-finite values."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape [B], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): need at least one pair")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        allowed = "NaN is allowed here, ±inf is not" if allow_nan else "all values must be finite"
        raise ValueError(
            f"{name} (shape {arr.shape}) has {int(bad.sum())} non-finite value(s), first at index "
            f"{first}: {arr[first]} ({allowed})"
        )
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError listing every shape when the [B] arrays differ in length."""
    if len({a.shape for a in arrays.values()}) > 1:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise ValueError(f"per-pair arrays must all have the same shape [B]; got {shapes}")


def _binary(name: str, x: ArrayLike) -> np.ndarray:
    """`x` as a float64 [B] array of 0.0 / 1.0; raises ValueError on any other value."""
    arr = _vector(name, x)
    bad = (arr != 0.0) & (arr != 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} (shape {arr.shape}) must hold only 0/1 (or bools); index {first} is {arr[first]}"
        )
    return arr


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and numpy scalars turned into dicts, lists and Python scalars."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------
# Result types


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap interval [low, high] at `level`, over n pairs."""

    value: float
    low: float
    high: float
    n: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Bucket:
    """Pairs whose key lies in [lo, hi) (the last bucket is closed, [lo, hi]); accuracy over them."""

    lo: float
    hi: float
    n: int
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


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
        return _plain(self)


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
        return _plain(self)


@dataclass(frozen=True)
class CalibrationBin:
    """One non-empty probability bin [lo, hi]: mean predicted p, observed positive rate, weight n.

    n is a count of evaluation points; it is fractional only when ties (p = 1/2) are split between
    the two central bins (even n_bins, see `calibration`).
    """

    lo: float
    hi: float
    p_mean: float
    frac_positive: float
    n: float

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Calibration:
    """Calibration of p = sigmoid(Δ): expected calibration error, Brier score and reliability bins.

    n is the number of evaluation points: B, or 2B when symmetrised (each pair scored both ways).
    """

    ece: float
    brier: float
    bins: tuple[CalibrationBin, ...]  # non-empty bins only, in increasing p
    n: int
    n_bins: int
    symmetrised: bool

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class LengthBaseline:
    """How much of the ranking length alone explains. Correlations are None when undefined."""

    accuracy_longer_wins: float
    corr_length_reward: float | None
    corr_length_gap: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class SwapTest:
    """Antisymmetry check: scoring (rejected, chosen) must give -Δ for every pair."""

    max_abs_sum: float  # max_i |Δ_i + Δ'_i|
    fraction_flipped: float  # fraction with sign(Δ'_i) == -sign(Δ_i)
    passed: bool  # max_abs_sum <= atol
    atol: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class GoldAgreement:
    """Agreement of estimated gaps with a known true gap. Undefined values are None."""

    accuracy_vs_true: float | None  # over pairs with gold gap != 0; estimated ties count 1/2
    pearson: float | None
    spearman: float | None
    n: int  # all pairs (correlations use all of them)
    n_gold_ties: int  # pairs with gold gap == 0, excluded from accuracy_vs_true

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


# ---------------------------------------------------------------------------------------------
# Elementary statistics


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Numerically stable logistic function σ(x) = 1 / (1 + e^{-x}), elementwise, float64.

    Uses e = exp(-|x|) ∈ (0, 1], so nothing overflows: σ(x) = 1/(1+e) for x >= 0 and
    e/(1+e) for x < 0. σ(0) = 1/2 exactly; σ(±800) = 1 and 0 without warnings.
    """
    arr = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(arr))
    return np.where(arr >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def skewness(x: ArrayLike) -> float:
    """Fisher skewness, biased: g1 = m3 / m2^{3/2}, with m_k = mean((x - mean(x))^k). x: [B].

    Matches `scipy.stats.skew(x)` (bias=True). A constant array (m2 == 0 up to rounding, with the
    threshold scipy uses) returns 0.0: a point mass is symmetric. Example: x = [0, 0, 3] has
    mean 1, m2 = 2, m3 = 2, so g1 = 2 / 2^{3/2} = 1/√2.
    """
    arr = _vector("x", x)
    centred = arr - arr.mean()
    m2 = float(np.mean(centred**2))
    m3 = float(np.mean(centred**3))
    if m2 <= (np.finfo(np.float64).eps * arr.mean()) ** 2:
        return 0.0
    return m3 / m2**1.5


def pearson(x: ArrayLike, y: ArrayLike) -> float | None:
    """Pearson correlation r = Σ(x-x̄)(y-ȳ) / sqrt(Σ(x-x̄)² Σ(y-ȳ)²). x, y: [B].

    Returns None when either array is constant (r undefined). Clipped to [-1, 1] against rounding.
    """
    a, b = _vector("x", x), _vector("y", y)
    _same_length(x=a, y=b)
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
    a, b = _vector("x", x), _vector("y", y)
    _same_length(x=a, y=b)
    return pearson(_average_ranks(a), _average_ranks(b))


# ---------------------------------------------------------------------------------------------
# Accuracy


def pairwise_accuracy(reward_gap: ArrayLike) -> float:
    """Fraction of pairs ranked correctly: (#{Δ > 0} + ½ #{Δ = 0}) / B. reward_gap: [B].

    `evaluate.accuracy.pairwise_accuracy` after this module's input checks (1-D, non-empty, finite).

    Example: Δ = [1, -2, 0, 3] gives (2 + ½) / 4 = 0.625. accuracy(Δ) + accuracy(-Δ) = 1.
    """
    return _accuracy.pairwise_accuracy(_vector("reward_gap", reward_gap))


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
    vals = _vector("values", values)
    n_boot = _positive_int("n_boot", n_boot)
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
    scores = pair_outcomes(_vector("reward_gap", reward_gap))
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
    gap = _vector("reward_gap", reward_gap)
    keys = np.abs(gap) if key is None else _vector("key", key, allow_nan=True)
    _same_length(reward_gap=gap, key=keys)
    n_buckets = _positive_int("n_buckets", n_buckets)
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


# ---------------------------------------------------------------------------------------------
# Distribution and calibration


def gap_distribution(reward_gap: ArrayLike, bins: int = 30) -> Distribution:
    """Mean, population std, Fisher skewness, 5/25/50/75/95 % quantiles and histogram of Δ [B].

    Quantiles use numpy's linear interpolation; the histogram has `bins` equal-width bins over
    [min Δ, max Δ] (numpy.histogram).
    """
    gap = _vector("reward_gap", reward_gap)
    bins = _positive_int("bins", bins)
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


def _mirror_bin_index(gaps: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of p = σ(Δ) [N] on [0, 1], built so that bin(-Δ) = n_bins - 1 - bin(Δ) exactly.

    The bin is computed from q = σ(-|Δ|) = min(p, 1 - p) and mirrored for Δ > 0, so a point on an
    edge goes to the bin nearer 1/2 on both sides of the diagram (p = ¼ and ¾ with 4 bins land in
    [¼, ½) and [½, ¾]); computing floor(p · n_bins) for each side separately would not mirror.
    Δ = 0 with even n_bins lands on the central edge and is handled by the caller.
    """
    q = sigmoid(-np.abs(gaps))  # (0, 1/2]
    lower = np.minimum(np.floor(q * n_bins), n_bins - 1).astype(np.int64)
    return np.where(gaps < 0, lower, n_bins - 1 - lower)


def calibration(
    reward_gap: ArrayLike,
    outcome: ArrayLike | None = None,
    n_bins: int = 10,
    symmetrise: bool | None = None,
) -> Calibration:
    """Calibration of p = σ(Δ), the predicted probability that the chosen response wins. Δ: [B].

    Per pair i the outcome y_i is 1 if the chosen response wins: `outcome` [B] (0/1) when given
    (e.g. 1 where the chosen response is truly better in a synthetic world), else 1 for every pair
    (human data: the chosen response won by definition).
    Evaluation points (p_j, y_j), N of them:
      - not symmetrised (default when `outcome` is given; it is then used directly):
        (σ(Δ_i), y_i), N = B.
      - symmetrised (default, and required, when `outcome` is None): each pair is scored both
        ways, (σ(Δ_i), y_i) and (σ(-Δ_i) = 1 - σ(Δ_i), 1 - y_i), N = 2B. With human data every
        y is 1, so without this a model that pushes all gaps to +∞ would look perfectly
        calibrated. The symmetrised set does not depend on which response of a pair is called
        "chosen" (as long as the outcome goes with it), and its reliability diagram is
        point-symmetric about (½, ½). It does depend on the sign of Δ: a model that prefers the
        rejected responses is miscalibrated, so negating every gap changes ECE.

    ECE = Σ_b (n_b / N) |mean p in b - fraction of y = 1 in b| over n_bins equal-width bins on
    [0, 1]. Bins are mirror images: presenting every pair the other way round (Δ → -Δ,
    y → 1 - y) moves each point to the mirrored bin (see `_mirror_bin_index`), which mirrors the
    diagram and leaves ECE unchanged. With even n_bins, p = ½ (Δ = 0) sits on the central edge and
    counts ½ in each of the two central bins (so bin weights can be fractional).
    Brier = (1/N) Σ_j (p_j - y_j)²; symmetrising leaves it unchanged, since both copies of a pair
    have the same squared error.

    Example (n_bins = 2, outcome given): Δ = [ln 3, ln 3, -ln 3], y = [1, 0, 0] gives p = ¾, ¾, ¼;
    upper bin |¾ - ½| = ¼ with weight ⅔, lower bin |¼ - 0| = ¼ with weight ⅓, ECE = ¼.
    """
    gap = _vector("reward_gap", reward_gap)
    n_bins = _positive_int("n_bins", n_bins)
    if symmetrise is None:
        symmetrise = outcome is None
    if outcome is None and not symmetrise:
        raise ValueError(
            "symmetrise=False needs an explicit outcome: without one every outcome is 1 (chosen won) "
            "and calibration only rewards large gaps; pass outcome=... or leave symmetrise unset"
        )
    if outcome is None:
        y = np.ones_like(gap)
    else:
        y = _binary("outcome", outcome)
        _same_length(reward_gap=gap, outcome=y)
    gaps = gap
    if symmetrise:  # [B] -> [2B]: (chosen, rejected) then (rejected, chosen)
        gaps, y = np.concatenate([gap, -gap]), np.concatenate([y, 1.0 - y])
    p = sigmoid(gaps)  # [N]
    index = _mirror_bin_index(gaps, n_bins)
    weight = np.ones_like(p)
    split = (gaps == 0) & (n_bins % 2 == 0)  # p = ½ on the central edge: half in each neighbour
    weight[split] = 0.5
    index = np.concatenate([index, np.full(int(split.sum()), n_bins // 2)])
    weight = np.concatenate([weight, np.full(int(split.sum()), 0.5)])
    p_all, y_all = np.concatenate([p, p[split]]), np.concatenate([y, y[split]])

    w_sum = np.bincount(index, weights=weight, minlength=n_bins)  # [n_bins]
    p_sum = np.bincount(index, weights=weight * p_all, minlength=n_bins)
    y_sum = np.bincount(index, weights=weight * y_all, minlength=n_bins)
    bins = tuple(
        CalibrationBin(
            lo=b / n_bins,
            hi=(b + 1) / n_bins,
            p_mean=float(p_sum[b] / w_sum[b]),
            frac_positive=float(y_sum[b] / w_sum[b]),
            n=float(w_sum[b]),
        )
        for b in range(n_bins)
        if w_sum[b] > 0
    )
    ece = sum(b.n / p.size * abs(b.p_mean - b.frac_positive) for b in bins)
    return Calibration(
        ece=float(ece),
        brier=float(np.mean((p - y) ** 2)),
        bins=bins,
        n=int(p.size),
        n_bins=n_bins,
        symmetrised=bool(symmetrise),
    )


# ---------------------------------------------------------------------------------------------
# Baselines and checks


def length_baseline(
    len_chosen: ArrayLike,
    len_rejected: ArrayLike,
    chosen_rewards: ArrayLike | None = None,
    rejected_rewards: ArrayLike | None = None,
) -> LengthBaseline:
    """The "longer response wins" baseline and how strongly rewards track length. All inputs: [B].

    accuracy_longer_wins = pairwise_accuracy(len_chosen - len_rejected) (equal lengths count ½).
    With rewards (both or neither):
      corr_length_reward = Pearson(concat(len_chosen, len_rejected), concat(r_c, r_r)) over 2B
        responses;
      corr_length_gap = Pearson(len_chosen - len_rejected, r_c - r_r) over B pairs.
    Without rewards both correlations are None; they are also None when an input is constant.
    Lengths are in whatever unit the caller uses (tokens, characters).
    """
    lc, lr = _vector("len_chosen", len_chosen), _vector("len_rejected", len_rejected)
    _same_length(len_chosen=lc, len_rejected=lr)
    accuracy = _accuracy.pairwise_accuracy(lc - lr)
    if (chosen_rewards is None) != (rejected_rewards is None):
        raise ValueError("pass both chosen_rewards and rejected_rewards, or neither")
    if chosen_rewards is None or rejected_rewards is None:
        return LengthBaseline(accuracy, None, None, n=int(lc.size))
    rc, rr = _vector("chosen_rewards", chosen_rewards), _vector("rejected_rewards", rejected_rewards)
    _same_length(len_chosen=lc, chosen_rewards=rc, rejected_rewards=rr)
    return LengthBaseline(
        accuracy_longer_wins=accuracy,
        corr_length_reward=pearson(np.concatenate([lc, lr]), np.concatenate([rc, rr])),
        corr_length_gap=pearson(lc - lr, rc - rr),
        n=int(lc.size),
    )


def swap_test(reward_gap: ArrayLike, swapped_gap: ArrayLike, atol: float = 1e-4) -> SwapTest:
    """Check Δ'_i = -Δ_i, where Δ' [B] is the gap from scoring each pair as (rejected, chosen).

    A reward model scores responses independently, so Δ + Δ' must vanish; a non-zero sum means
    the pair leaks into a response's score (position, padding or batching bugs).
    passed = max_i |Δ_i + Δ'_i| <= atol. fraction_flipped counts sign(Δ'_i) == -sign(Δ_i)
    (a tie that stays a tie counts as flipped).
    """
    gap, swapped = _vector("reward_gap", reward_gap), _vector("swapped_gap", swapped_gap)
    _same_length(reward_gap=gap, swapped_gap=swapped)
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
    gap = _vector("reward_gap", reward_gap)
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return np.argsort(gap, kind="stable")[: int(k)]


def gold_agreement(reward_gap: ArrayLike, gold_gap: ArrayLike) -> GoldAgreement:
    """Agreement of estimated gaps Δ [B] with the true gaps Δ* [B] of a synthetic world.

    accuracy_vs_true = (#{sign Δ = sign Δ*} + ½ #{Δ = 0}) / #{Δ* != 0}: pairs with Δ* = 0 have no
    true preference, so they are excluded and counted in n_gold_ties (None if all are ties).
    pearson and spearman (average ranks for ties) use all B pairs; None when a side is constant.
    """
    gap, gold = _vector("reward_gap", reward_gap), _vector("gold_gap", gold_gap)
    _same_length(reward_gap=gap, gold_gap=gold)
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
