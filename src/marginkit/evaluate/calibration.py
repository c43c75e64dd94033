"""Calibration of σ(Δ), the predicted probability that the chosen response wins: expected calibration
error over mirrored equal-width bins, the Brier score, and reliability bins (symmetrised for human data,
where every observed outcome is "chosen won")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate.arrays import binary, plain, positive_int, same_length, vector

__all__ = ["Calibration", "CalibrationBin", "calibration", "sigmoid"]


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
        return plain(self)


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
        return plain(self)


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Numerically stable logistic function σ(x) = 1 / (1 + e^{-x}), elementwise, float64.

    Uses e = exp(-|x|) ∈ (0, 1], so nothing overflows: σ(x) = 1/(1+e) for x >= 0 and
    e/(1+e) for x < 0. σ(0) = 1/2 exactly; σ(±800) = 1 and 0 without warnings.
    """
    arr = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(arr))
    return np.where(arr >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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
    gap = vector("reward_gap", reward_gap)
    n_bins = positive_int("n_bins", n_bins)
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
        y = binary("outcome", outcome)
        same_length(reward_gap=gap, outcome=y)
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
