"""Reports: PNG plots of training curves, gap histograms, bucket accuracy and reliability."""

from marginkit.report.plots import (
    plot_accuracy_by_bucket,
    plot_margin_histograms,
    plot_reliability,
    plot_training_curves,
    read_metrics_jsonl,
)

__all__ = ["plot_accuracy_by_bucket", "plot_margin_histograms", "plot_reliability", "plot_training_curves",
           "read_metrics_jsonl"]
