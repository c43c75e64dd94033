"""Tests for marginkit.report.plots: each plot writes a real, non-blank PNG; the JSONL reader parses train and eval lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from numpy.testing import assert_array_equal

from marginkit.evaluate.metrics import Bucket, accuracy_by_bucket, calibration
from marginkit.report.plots import (
    plot_accuracy_by_bucket,
    plot_margin_histograms,
    plot_reliability,
    plot_training_curves,
    read_metrics_jsonl,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path, expected: Path) -> None:
    """The returned path is the requested one, holds a PNG, and the image is not a blank canvas."""
    assert path == expected
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels[..., :3].std() > 0.01  # something was drawn on the white background


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def run_log(path: Path, offset: float) -> Path:
    records = []
    for step in (10, 20, 30, 40):
        records.append(
            {
                "step": step,
                "loss": 0.69 - offset * step / 40,
                "rewards/accuracies": 0.5 + step / 100,
                "rewards/margins": step / 20,
                "learning_rate": 1e-5,
            }
        )
        if step % 20 == 0:
            records.append(
                {"step": step, "eval_loss": 0.7 - offset * step / 50, "eval_rewards/accuracies": 0.55}
            )
    return write_jsonl(path, records)


def test_read_metrics_jsonl_splits_train_and_eval(tmp_path: Path) -> None:
    log = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"step": 2, "loss": 0.5},
            {"step": 1, "loss": 0.7, "rewards/margins": None},
            {"step": 2, "eval_loss": 0.6, "epoch": 1},
            {"step": 3, "loss": float("nan")},
        ],
    )
    series = read_metrics_jsonl(log, ["loss", "rewards/margins"])
    steps, values = series["loss"]["train"]
    assert_array_equal(steps, [1.0, 2.0])  # sorted by step; NaN dropped
    assert_array_equal(values, [0.7, 0.5])
    assert_array_equal(series["loss"]["eval"][0], [2.0])
    assert_array_equal(series["loss"]["eval"][1], [0.6])
    assert series["rewards/margins"]["train"][0].size == 0  # null skipped


def test_read_metrics_jsonl_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1}\n{"loss": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2.*step"):
        read_metrics_jsonl(bad, ["loss"])
    bad.write_text('{"step": 1,\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl line 1: invalid JSON"):
        read_metrics_jsonl(bad, ["loss"])


def test_plot_training_curves(tmp_path: Path) -> None:
    logs = {"bt": run_log(tmp_path / "bt.jsonl", 0.2), "bt+margin": run_log(tmp_path / "m.jsonl", 0.3)}
    out = tmp_path / "plots" / "curves.png"  # parent folder does not exist yet
    assert_real_png(plot_training_curves(logs, out), out)


def test_plot_margin_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gaps = {"bt": rng.normal(0.5, 1.0, 200), "bt+margin": rng.normal(1.5, 1.2, 150)}
    out = tmp_path / "hist.png"
    assert_real_png(plot_margin_histograms(gaps, out), out)
    with pytest.raises(ValueError, match="non-finite"):
        plot_margin_histograms({"bad": np.array([0.0, np.nan])}, tmp_path / "bad.png")


def test_plot_accuracy_by_bucket(tmp_path: Path) -> None:
    gap = np.array([1.0, -1.0, 2.0, 0.5, -0.1, 3.0, 0.2, 1.5])
    buckets = {
        "bt": accuracy_by_bucket(gap),
        "bt+margin": [Bucket(0.0, 1.0, 4, 0.75), Bucket(1.0, 3.0, 4, 1.0)],  # plain lists work too
    }
    out = tmp_path / "buckets.png"
    assert_real_png(plot_accuracy_by_bucket(buckets, out), out)


def test_plot_reliability(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gap = rng.normal(1.0, 2.0, 300)
    cals = {
        "human (both ways)": calibration(gap),
        "gold": calibration(gap, outcome=(gap + rng.normal(0, 1, 300)) > 0),
    }
    out = tmp_path / "reliability.png"
    assert_real_png(plot_reliability(cals, out), out)
