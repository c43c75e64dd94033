"""Best-of-N maths: picks from the first k samples, judged picks, win rates with ties split, intervals, KL.

Best-of-N (Nakano et al. 2021, WebGPT, arXiv:2112.09332; Stiennon et al. 2020, arXiv:2009.01325,
appendix) draws N samples per prompt from a policy and keeps the one a proxy reward model scores
highest. Everything here is a pure function of arrays:

    scores [P, K]   proxy reward of sample k of prompt p, one array per RM (K = the largest N)
    judge  [P, K]   the judge's reward of the same samples (the gold world's true reward, or another RM)

The sweep over N reuses one draw: the pick for N = k is the argmax over the *first* k samples, so
every N sees the same samples and the curves differ only by N (sampling once at the largest N is
exactly as good as sampling afresh for each N, and K times cheaper). Ties in the proxy go to the
lowest index (`np.argmax`), so identical scores never pick different samples for two RMs.

Win rate of RM A over RM B at N: per prompt, the judge compares A's pick with B's pick,
outcome 1 if judge(a) > judge(b), 1/2 on a tie, 0 otherwise; the win rate is the mean outcome over
prompts (ties split, as in AlpacaEval and the seed paper's "win/tie/lose"). At N = 1 both RMs pick
sample 0, every prompt is a tie, and the win rate is exactly 1/2. Intervals are percentile
bootstraps over prompts (`evaluate.metrics.bootstrap_ci`, same seed for every N and every RM, so
the resamples are shared and the curves are comparable).

Analytic KL of the Best-of-N policy to the base policy: KL_bon(N) = log N - (N - 1) / N
(Stiennon et al. 2020, appendix; Hilton & Gao's note; Beirami et al. 2024, arXiv:2401.01879, show it
is an upper bound, exact when no two samples tie). KL(1) = 0, KL(2) = log 2 - 1/2 = 0.1931,
KL(64) = log 64 - 63/64 = 3.1745.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from marginkit.evaluate.accuracy import pair_outcomes
from marginkit.evaluate.metrics import bootstrap_ci

__all__ = [
    "bon_kl",
    "best_of_n_picks",
    "picked",
    "win_outcomes",
    "win_rate",
    "WinRate",
    "win_rate_with_ci",
    "MeanCI",
    "mean_with_ci",
    "OverOptimisation",
    "over_optimisation",
    "BoNResult",
    "best_of_n_sweep",
]


def _matrix(name: str, x: ArrayLike) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: need a [prompts, samples] array with both sizes >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}: non-finite value {arr[tuple(bad)]} at prompt {bad[0]}, sample {bad[1]}")
    return arr


def _check_n(n: int, k: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= k:
        raise ValueError(f"N={n!r}: need an integer 1 <= N <= {k} (the samples drawn per prompt)")
    return int(n)


def bon_kl(n: int) -> float:
    """KL(Best-of-N || base) = log N - (N - 1) / N in nats (module docstring). bon_kl(1) = 0."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N={n!r}: need an integer >= 1")
    return math.log(n) - (n - 1) / n


def best_of_n_picks(scores: ArrayLike, n: int) -> np.ndarray:
    """[P] int index of the highest proxy score among the first n samples of each prompt.

    scores: [P, K] with K >= n. Ties go to the lowest index. Readable form of
    `[int(np.argmax(row[:n])) for row in scores]`.
    """
    s = _matrix("scores", scores)
    n = _check_n(n, s.shape[1])
    return np.argmax(s[:, :n], axis=1)  # [P, n] -> [P]


def picked(values: ArrayLike, picks: ArrayLike) -> np.ndarray:
    """[P] values[p, picks[p]]: e.g. the judge's reward of each prompt's picked sample. values: [P, K]."""
    v = _matrix("values", values)
    idx = np.asarray(picks)
    if idx.shape != (v.shape[0],) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"picks: need [{v.shape[0]}] integer indices, got shape {idx.shape} dtype {idx.dtype}")
    if (idx < 0).any() or (idx >= v.shape[1]).any():
        raise ValueError(f"picks: indices must lie in [0, {v.shape[1]}), got {idx.min()}..{idx.max()}")
    return v[np.arange(v.shape[0]), idx]


def win_outcomes(judge_a: ArrayLike, judge_b: ArrayLike) -> np.ndarray:
    """[P] outcome of A's pick against B's pick per prompt: 1 (A better), 0.5 (tie), 0 (B better).

    judge_a, judge_b: [P] the judge's rewards of the two picks. The outcome is the pairwise-accuracy
    rule (evaluate/accuracy.py) on their difference judge_a - judge_b. A tie is exact equality (for
    finite floats a - b == 0 exactly when a == b), which is what the same sample (or the same text)
    gets from a deterministic judge.
    """
    a, b = np.asarray(judge_a, dtype=np.float64), np.asarray(judge_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"judge_a, judge_b: need two [P] arrays of the same length >= 1, got {a.shape}, {b.shape}")
    return pair_outcomes(a - b)


def win_rate(outcomes: ArrayLike) -> float:
    """Mean outcome over prompts (ties count 1/2)."""
    return float(np.mean(np.asarray(outcomes, dtype=np.float64)))


@dataclass(frozen=True)
class WinRate:
    """Win rate of `rm` over `baseline` at N with a percentile-bootstrap interval over prompts."""

    rm: str
    baseline: str
    n: int
    value: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def win_rate_with_ci(judge_a: ArrayLike, judge_b: ArrayLike, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0, rm: str = "a", baseline: str = "b", n: int = 0) -> WinRate:
    """Win rate of A's picks over B's picks, ties split, with a bootstrap interval resampling prompts."""
    out = win_outcomes(judge_a, judge_b)
    low, high = bootstrap_ci(out, np.mean, n_boot=n_boot, level=level, seed=seed)
    return WinRate(rm=rm, baseline=baseline, n=n, value=win_rate(out), low=low, high=high,
                   wins=int((out == 1.0).sum()), ties=int((out == 0.5).sum()), losses=int((out == 0.0).sum()),
                   level=level)


@dataclass(frozen=True)
class MeanCI:
    """A mean over prompts with a percentile-bootstrap interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_with_ci(values: ArrayLike, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> MeanCI:
    """Mean of [P] per-prompt values, interval from resampling prompts."""
    v = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(v, np.mean, n_boot=n_boot, level=level, seed=seed)
    return MeanCI(float(v.mean()), low, high)


@dataclass(frozen=True)
class OverOptimisation:
    """Where the judge's (true) reward of the picks stops rising as N grows.

    peak_n: the smallest N in the sweep with the highest mean judge reward; rising_at_end: True when
    that is the largest N (no over-optimisation seen within the sweep); drop: judge mean at the
    peak minus at the largest N (>= 0); proxy_gain: the RM's own score of its pick, largest N minus
    N = 1 (always >= 0: the max over more samples never falls).
    """

    rm: str
    peak_n: int
    peak_judge: float
    rising_at_end: bool
    drop: float
    proxy_gain: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def over_optimisation(rm: str, ns: Sequence[int], judge_means: Sequence[float],
                      proxy_means: Sequence[float]) -> OverOptimisation:
    """Summarise one RM's curve (ns ascending; judge_means, proxy_means: [len(ns)])."""
    j = np.asarray(judge_means, dtype=np.float64)
    p = np.asarray(proxy_means, dtype=np.float64)
    if len(ns) == 0 or j.shape != (len(ns),) or p.shape != (len(ns),):
        raise ValueError(f"over_optimisation: ns, judge_means, proxy_means need one value per N, got "
                         f"{len(ns)}, {j.shape}, {p.shape}")
    if list(ns) != sorted(set(ns)):
        raise ValueError(f"over_optimisation: ns must be strictly increasing, got {list(ns)}")
    i = int(np.argmax(j))  # first maximum: the smallest N reaching the peak
    return OverOptimisation(rm=rm, peak_n=int(ns[i]), peak_judge=float(j[i]), rising_at_end=i == len(ns) - 1,
                            drop=float(j[i] - j[-1]), proxy_gain=float(p[-1] - p[0]))


@dataclass
class BoNResult:
    """The sweep, as plain lists (one entry per N) ready for JSON and plots.

    per_rm[name]: {"judge": [MeanCI], "proxy": [float]} (judge reward of the picks, the RM's own
    score of its pick); win_rates[name]: [WinRate] against `baseline` (every RM but the baseline);
    judge_diff[name]: [MeanCI] of judge(RM's pick) - judge(baseline's pick), paired per prompt (more
    sensitive than the win rate, which ignores by how much a pick wins); reference: "judge_best"
    (the judge's own best of the first N) and "unguided" (mean judge reward of the first N samples:
    the expected value of a pick made without any RM).
    """

    ns: list[int]
    kl: list[float]
    baseline: str
    n_prompts: int
    n_samples: int
    per_rm: dict[str, dict[str, list[Any]]]
    win_rates: dict[str, list[WinRate]]
    judge_diff: dict[str, list[MeanCI]]
    reference: dict[str, list[float]]
    over_optimisation: dict[str, OverOptimisation]
    n_boot: int
    level: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ns": self.ns, "kl": self.kl, "baseline": self.baseline, "n_prompts": self.n_prompts,
            "n_samples": self.n_samples, "n_boot": self.n_boot, "level": self.level, "seed": self.seed,
            "per_rm": {name: {"judge": [m.to_dict() for m in d["judge"]], "proxy": list(d["proxy"])}
                       for name, d in self.per_rm.items()},
            "win_rates": {name: [w.to_dict() for w in ws] for name, ws in self.win_rates.items()},
            "judge_diff": {name: [m.to_dict() for m in ms] for name, ms in self.judge_diff.items()},
            "reference": self.reference,
            "over_optimisation": {name: o.to_dict() for name, o in self.over_optimisation.items()},
            **self.extra,
        }


def best_of_n_sweep(scores: Mapping[str, ArrayLike], judge: ArrayLike, ns: Sequence[int], baseline: str | None = None,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> BoNResult:
    """Best-of-N for every RM and N: judge reward of the picks, win rates against the baseline, KL.

    scores: {rm name: [P, K]} proxy rewards (the first entry is the baseline unless `baseline` is
    given); judge: [P, K]; ns: the N to evaluate, each in 1..K.
    """
    if not scores:
        raise ValueError("scores is empty: give at least one {rm name: [P, K] scores}")
    j = _matrix("judge", judge)
    mats = {name: _matrix(f"scores[{name!r}]", s) for name, s in scores.items()}
    for name, s in mats.items():
        if s.shape != j.shape:
            raise ValueError(f"scores[{name!r}] has shape {s.shape} but judge has {j.shape}: same samples needed")
    ns = sorted({_check_n(n, j.shape[1]) for n in ns})
    if not ns:
        raise ValueError("ns is empty: give at least one N")
    baseline = baseline if baseline is not None else next(iter(mats))
    if baseline not in mats:
        raise ValueError(f"baseline {baseline!r} is not one of the RMs {list(mats)}")
    per_rm: dict[str, dict[str, list[Any]]] = {name: {"judge": [], "proxy": []} for name in mats}
    wins: dict[str, list[WinRate]] = {name: [] for name in mats if name != baseline}
    diffs: dict[str, list[MeanCI]] = {name: [] for name in wins}
    for n in ns:
        picks = {name: best_of_n_picks(s, n) for name, s in mats.items()}  # {rm: [P]}
        judged = {name: picked(j, p) for name, p in picks.items()}  # {rm: [P]}
        for name, s in mats.items():
            per_rm[name]["judge"].append(mean_with_ci(judged[name], n_boot, level, seed))
            per_rm[name]["proxy"].append(float(picked(s, picks[name]).mean()))
        for name in wins:
            wins[name].append(win_rate_with_ci(judged[name], judged[baseline], n_boot, level, seed, name, baseline, n))
            diffs[name].append(mean_with_ci(judged[name] - judged[baseline], n_boot, level, seed))
    reference = {"judge_best": [float(j[:, :n].max(axis=1).mean()) for n in ns],
                 "unguided": [float(j[:, :n].mean()) for n in ns]}
    over = {name: over_optimisation(name, ns, [m.mean for m in d["judge"]], d["proxy"]) for name, d in per_rm.items()}
    return BoNResult(ns=ns, kl=[bon_kl(n) for n in ns], baseline=baseline, n_prompts=j.shape[0], n_samples=j.shape[1],
                     per_rm=per_rm, win_rates=wins, judge_diff=diffs, reference=reference, over_optimisation=over, n_boot=n_boot,
                     level=level, seed=seed)

