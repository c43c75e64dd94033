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

__all__ = ["t_interval", "format_interval"]


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
