"""Intervals over repeated runs (seeds): the Student-t interval of a mean, and how the studies print one.

A study repeats each setting over n seeds and reports the mean of a metric x_1 .. x_n with a 95%
Student-t interval (the seeds are the only source of spread, so the interval is over seeds, not pairs):

    x̄ = (1/n) Σ_i x_i,     s = sqrt( Σ_i (x_i - x̄)² / (n - 1) ),
    x̄ ± t_{n-1}(0.5 + level/2) · s / √n

where t_{n-1}(q) is the q-quantile of Student's t with n - 1 degrees of freedom (scipy.stats.t.ppf).
Example: x = [1, 2, 3] gives x̄ = 2, s = 1, t_2(0.975) = 4.303, so 2 ± 2.484. A paired difference
("vs BT") is the same interval over the per-seed differences. Used by the studies (study/margins.py,
study/real/) and by Best-of-N over several RM trainings (evaluate/bon_run.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["t_interval", "t_test_p", "pooled_se_interval", "holm", "holm_levels", "min_detectable_effect",
           "format_interval"]


def t_interval(x: Sequence[float | None], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval x̄ ± t_{n-1}(0.5 + level/2) s / √n of the mean of x.

    None and non-finite values are left out first. One value gives (x_1, nan, nan); none gives nan
    throughout. Example: [1, 2, 3] -> (2.0, -0.484, 4.484).
    """
    from scipy import stats

    a = np.asarray([v for v in x if v is not None and math.isfinite(v)], dtype=float)
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def format_interval(t: tuple[float, float, float], digits: int = 3) -> str:
    """"mean [low, high]" for a `t_interval` result; "mean" alone without an interval; "–" without a mean.

    Example: (0.5, 0.25, 0.75) -> "0.500 [0.250, 0.750]"; (0.7, nan, nan) -> "0.700".
    """
    mean, low, high = t
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def t_test_p(x: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean(x) = 0 (NaN for fewer than 2 finite values;
    0 when every value is the same non-zero number, 1 when all are 0).

    Example: x = [1, 2, 3]: t = 2 / (1 / √3) = 3.464 on 2 degrees of freedom, p = 0.0742."""
    from scipy import stats

    a = np.asarray([v for v in x if v is not None and math.isfinite(v)], dtype=float)
    if len(a) < 2:
        return math.nan
    sd = a.std(ddof=1)
    if sd == 0:
        return 1.0 if a.mean() == 0 else 0.0
    t = a.mean() / (sd / math.sqrt(len(a)))
    return float(2 * stats.t.sf(abs(t), len(a) - 1))


def pooled_se_interval(means: Sequence[float], ses: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """The interval over *test items* of an average over S independent test sets (one per seed): each seed s
    gives a mean difference d_s with standard error se_s over its own test pairs; the average d̄ = (1/S) Σ d_s
    has standard error sqrt(Σ se_s²) / S (the training runs held fixed), and the interval is d̄ ± z · that.

    Example: d = [0.02, 0.04], se = [0.01, 0.01]: d̄ = 0.03, se = √0.0002 / 2 = 0.00707, 95%: ± 0.01386."""
    from scipy import stats

    pairs = [(m, e) for m, e in zip(means, ses, strict=True) if math.isfinite(m) and math.isfinite(e)]
    if not pairs:
        return math.nan, math.nan, math.nan
    d = float(np.mean([m for m, _ in pairs]))
    se = math.sqrt(sum(e * e for _, e in pairs)) / len(pairs)
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return d, d - half, d + half


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, strong control of the family-wise error rate), in input order.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m): adj_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)).
    NaN stays NaN and does not count in m. Example: [0.01, 0.04, 0.03] -> sorted 0.01, 0.03, 0.04 ->
    3·0.01 = 0.03, 2·0.03 = 0.06, 1·0.04 = 0.04 -> running max 0.03, 0.06, 0.06 -> [0.03, 0.06, 0.06]."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(finite)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """The confidence level of each comparison's Holm-corrected interval, in input order: the k-th smallest of
    the m finite p-values is tested at α / (m - k + 1), so its interval is drawn at 1 - α / (m - k + 1) (an
    interval that excludes 0 exactly when that step of Holm's procedure rejects, for the steps it reaches).
    NaN p-values get NaN. Example: [0.01, 0.04, 0.03], α = 0.05 -> [1 - 0.05/3, 1 - 0.05/1, 1 - 0.05/2]."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(finite)
    out = [math.nan] * len(pvalues)
    for k, (_, i) in enumerate(finite):
        out[i] = 1.0 - alpha / (m - k)
    return out


def min_detectable_effect(sd: float, n: int, m: int = 1, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test over n seeds detects with the given power, at the
    Bonferroni level α/m (what Holm's first step uses; a conservative bound for a table of m comparisons):
    (t_{n-1}(1 - α/2m) + t_{n-1}(power)) · sd / √n. Example: sd = 0.01, n = 10, m = 1: (2.262 + 0.883) · 0.00316
    = 0.00995."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return math.nan
    q = stats.t.ppf(1 - alpha / (2 * m), n - 1) + stats.t.ppf(power, n - 1)
    return float(q * sd / math.sqrt(n))
