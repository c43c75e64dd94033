"""Pairwise evaluation metrics for reward models, in one namespace: accuracy and buckets, calibration,
the gap distribution, correlation, and controls (gold agreement, length baseline, swap test).

Pure numpy over per-pair arrays (no torch, no model). B = pairs. The main input is the reward
gap Δ = r_chosen - r_rejected [B]; a pair is ranked correctly when Δ > 0, and a tie (Δ == 0)
counts 1/2 (the expected accuracy of breaking the tie by a coin flip): the one rule of
evaluate/accuracy.py, which every accuracy here goes through.

Each concept has its module; this one re-exports them, so `from marginkit.evaluate import metrics as M`
reaches all of them:

    buckets.py       pairwise_accuracy, bootstrap_ci, accuracy_with_ci (Estimate), accuracy_by_bucket
    calibration.py   calibration of σ(Δ) (Calibration, CalibrationBin), sigmoid
    distribution.py  gap_distribution (Distribution), skewness
    correlation.py   pearson, spearman
    controls.py      gold_agreement, length_baseline, swap_test, worst_pairs
    arrays.py        the input checks they share

Results are small frozen dataclasses; `.to_dict()` gives plain JSON-serialisable values
(floats, ints, bools, lists, None). `None` marks a value that is undefined for the input, such
as a Pearson correlation of a constant array.

Input policy: every array must be 1-D, non-empty and of equal length B across arguments, else a
ValueError shows the shapes. NaN or infinite inputs raise, except where a docstring says
otherwise (`accuracy_by_bucket` excludes and counts NaN keys).
"""

from marginkit.evaluate.buckets import (
    Bucket,
    BucketedAccuracy,
    Estimate,
    accuracy_by_bucket,
    accuracy_with_ci,
    bootstrap_ci,
    pairwise_accuracy,
)
from marginkit.evaluate.calibration import Calibration, CalibrationBin, calibration, sigmoid
from marginkit.evaluate.controls import (
    GoldAgreement,
    LengthBaseline,
    SwapTest,
    gold_agreement,
    length_baseline,
    swap_test,
    worst_pairs,
)
from marginkit.evaluate.correlation import pearson, spearman
from marginkit.evaluate.distribution import Distribution, gap_distribution, skewness

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
