"""Evaluation: pure metrics over reward gaps (metrics.py re-exports them; the accuracy rule is accuracy.py), the training scorer (scorer.py), the RM report (rm_eval.py)."""

from marginkit.evaluate.metrics import (
    Bucket,
    BucketedAccuracy,
    Calibration,
    CalibrationBin,
    Distribution,
    Estimate,
    GoldAgreement,
    LengthBaseline,
    SwapTest,
    accuracy_by_bucket,
    accuracy_with_ci,
    bootstrap_ci,
    calibration,
    gap_distribution,
    gold_agreement,
    length_baseline,
    pairwise_accuracy,
    pearson,
    sigmoid,
    skewness,
    spearman,
    swap_test,
    worst_pairs,
)

__all__ = [
    "Bucket", "BucketedAccuracy", "Calibration", "CalibrationBin", "Distribution", "Estimate", "GoldAgreement",
    "LengthBaseline", "SwapTest", "accuracy_by_bucket", "accuracy_with_ci", "bootstrap_ci", "calibration",
    "gap_distribution", "gold_agreement", "length_baseline", "pairwise_accuracy", "pearson", "sigmoid", "skewness",
    "spearman", "swap_test", "worst_pairs",
]
