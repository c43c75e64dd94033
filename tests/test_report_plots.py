"""Tests for marginkit.report.plots: each plot writes a real PNG of the figure it drew, and that figure shows the
data it was given (line and bar data, titles, axis labels and legend entries read back from the matplotlib
Figure); the JSONL reader parses train and eval lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import imread
from numpy.testing import assert_allclose, assert_array_equal

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


@pytest.fixture
def drawn(monkeypatch) -> list[Figure]:
    """The Figures the plot functions save, in order (Figure.savefig wrapped, so the PNG is still written).

    The plot functions return only the path; matplotlib's own savefig is the one place every figure passes."""
    figures: list[Figure] = []
    real = Figure.savefig

    def record(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def legend_texts(ax) -> list[str]:
    """The legend's entries: the axes' own, or (plots with one axes) the figure's, which sits under the axes."""
    legend = ax.get_legend() or ax.figure.legends[0]
    return [t.get_text() for t in legend.get_texts()]


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


def test_plot_training_curves(tmp_path: Path, drawn: list[Figure]) -> None:
    logs = {"bt": run_log(tmp_path / "bt.jsonl", 0.2), "bt+margin": run_log(tmp_path / "m.jsonl", 0.3)}
    out = tmp_path / "plots" / "curves.png"  # parent folder does not exist yet
    assert_real_png(plot_training_curves(logs, out), out)
    (fig,) = drawn
    assert fig._suptitle.get_text() == "Training curves"
    loss_ax, acc_ax, margin_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "rewards/accuracies", "rewards/margins"]
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)
    # run_log by hand: train loss 0.69 - offset step / 40 at steps 10..40; eval loss 0.7 - offset step / 50 at 20, 40
    train_steps, eval_steps = [10, 20, 30, 40], [20, 40]
    expected_loss = {"bt train": (train_steps, [0.64, 0.59, 0.54, 0.49]), "bt eval": (eval_steps, [0.62, 0.54]),
                     "bt+margin train": (train_steps, [0.615, 0.54, 0.465, 0.39]),
                     "bt+margin eval": (eval_steps, [0.58, 0.46])}
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines) == list(expected_loss)
    # one legend for the figure, under the panels: each run's colour once, then each line style once
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["bt", "bt+margin", "train", "eval"]
    for label, (x, y) in expected_loss.items():
        assert_allclose(lines[label].get_xdata(), x)
        assert_allclose(lines[label].get_ydata(), y)
    # one colour per run, train solid, eval dashed with markers
    assert lines["bt train"].get_color() == lines["bt eval"].get_color() != lines["bt+margin train"].get_color()
    assert lines["bt train"].get_linestyle() == "-" and lines["bt eval"].get_linestyle() == "--"
    assert lines["bt eval"].get_marker() == "o"
    acc = {line.get_label(): line.get_ydata() for line in acc_ax.get_lines()}
    assert_allclose(acc["bt train"], [0.6, 0.7, 0.8, 0.9])  # 0.5 + step / 100
    assert_allclose(acc["bt+margin eval"], [0.55, 0.55])
    # no eval_rewards/margins in the logs: train lines only, step / 20
    margins = {line.get_label(): line.get_ydata() for line in margin_ax.get_lines()}
    assert list(margins) == ["bt train", "bt+margin train"]
    assert_allclose(margins["bt+margin train"], [0.5, 1.0, 1.5, 2.0])


def test_plot_training_curves_marks_a_key_with_no_data(tmp_path: Path, drawn: list[Figure]) -> None:
    plot_training_curves({"bt": run_log(tmp_path / "bt.jsonl", 0.2)}, tmp_path / "c.png", keys=["loss", "grad_norm"])
    loss_ax, empty_ax = drawn[0].axes
    assert len(loss_ax.get_lines()) == 2 and empty_ax.get_lines() == []
    assert [t.get_text() for t in empty_ax.texts] == ["no data"] and empty_ax.get_legend() is None


def test_plot_margin_histograms(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    gaps = {"bt": rng.normal(0.5, 1.0, 200), "bt+margin": rng.normal(1.5, 1.2, 150)}
    out = tmp_path / "hist.png"
    assert_real_png(plot_margin_histograms(gaps, out, bins=20), out)
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_title() == "Reward gap Δ = r_chosen − r_rejected" and ax.get_xlabel() == "reward gap Δ"
    # shared edges over both runs; each run's filled bars are its own counts on those edges
    edges = np.histogram_bin_edges(np.concatenate(list(gaps.values())), bins=20)
    assert len(ax.containers) == 2
    for bars, gap in zip(ax.containers, gaps.values()):
        assert_array_equal([b.get_height() for b in bars], np.histogram(gap, bins=edges)[0])
        assert_allclose([b.get_x() for b in bars], edges[:-1])
    # legend: B and accuracy (ties 1/2) computed here by hand; then the Δ = 0 line
    acc = {name: float(np.mean((g > 0) + 0.5 * (g == 0))) for name, g in gaps.items()}
    assert legend_texts(ax) == [f"bt (B=200, acc={acc['bt']:.3f})", f"bt+margin (B=150, acc={acc['bt+margin']:.3f})",
                                "Δ = 0"]
    (zero,) = ax.get_lines()
    assert list(zero.get_xdata()) == [0.0, 0.0]
    with pytest.raises(ValueError, match="non-finite"):
        plot_margin_histograms({"bad": np.array([0.0, np.nan])}, tmp_path / "bad.png")


def test_plot_accuracy_by_bucket(tmp_path: Path, drawn: list[Figure]) -> None:
    gap = np.array([1.0, -1.0, 2.0, 0.5, -0.1, 3.0, 0.2, 1.5])
    buckets = {
        "bt": accuracy_by_bucket(gap),
        "bt+margin": [Bucket(0.0, 1.0, 4, 0.75), Bucket(1.0, 3.0, 4, 1.0)],  # plain lists work too
    }
    out = tmp_path / "buckets.png"
    assert_real_png(plot_accuracy_by_bucket(buckets, out), out)
    (fig,) = drawn
    (ax,) = fig.axes
    bt, margin = ax.containers
    # |Δ| quartile buckets by hand: {0.1 (wrong), 0.2} -> 1/2, n 2; {0.5} -> 1, n 1; {1, 1 (wrong), 1.5} -> 2/3, n 3;
    # {2, 3} -> 1, n 2. Two runs: bars 0.4 wide, centred 0.2 either side of each bucket's tick.
    assert_allclose([b.get_height() for b in bt], [0.5, 1.0, 2 / 3, 1.0])
    assert_allclose([b.get_x() + b.get_width() / 2 for b in bt], [-0.2, 0.8, 1.8, 2.8])
    assert_allclose([b.get_height() for b in margin], [0.75, 1.0])
    assert_allclose([b.get_x() + b.get_width() / 2 for b in margin], [0.2, 1.2])
    assert [b.get_facecolor() for b in bt][0] != [b.get_facecolor() for b in margin][0]
    bar_labels = [t.get_text() for t in ax.texts]
    assert bar_labels == ["n=2", "n=1", "n=3", "n=2", "n=4", "n=4"]
    # the runs' edges differ, so the ticks are ordinals
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bucket 1", "bucket 2", "bucket 3", "bucket 4"]
    assert legend_texts(ax) == ["chance", "bt", "bt+margin"]  # matplotlib lists lines before bar containers
    (chance,) = ax.get_lines()
    assert list(chance.get_ydata()) == [0.5, 0.5]


def test_plot_accuracy_by_bucket_same_edges_label_the_ranges(tmp_path: Path, drawn: list[Figure]) -> None:
    same = [Bucket(0.0, 1.0, 4, 0.75), Bucket(1.0, 3.0, 4, 1.0)]
    plot_accuracy_by_bucket({"a": same, "b": same}, tmp_path / "b.png")
    (ax,) = drawn[0].axes
    # one test set: the same n in every run goes under the tick once, not above each bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[0, 1)\nn=4", "[1, 3]\nn=4"] and len(ax.texts) == 0
    # the lowest |gap| of a real run is ~1e-17: shown as 0
    plot_accuracy_by_bucket({"a": [Bucket(1.39e-17, 0.3, 2, 0.5), Bucket(0.3, 6.85, 2, 1.0)]}, tmp_path / "c.png")
    assert [t.get_text() for t in drawn[1].axes[0].get_xticklabels()] == ["[0, 0.3)\nn=2", "[0.3, 6.85]\nn=2"]


def test_plot_training_curves_draws_the_loss_at_zero_gap(tmp_path: Path, drawn: list[Figure]) -> None:
    # A margin run logs diagnostics/loss_at_zero_gap (mean softplus(m) of its batch): drawn dotted in the run's
    # colour beside its loss, so a loss of ~1.2 reads against its own start (1.31 = softplus(1)), not ln 2.
    log = write_jsonl(tmp_path / "m.jsonl", [{"step": s, "loss": 1.3 - 0.01 * s, "diagnostics/loss_at_zero_gap": 1.3133}
                                             for s in (10, 20)])
    plot_training_curves({"fixed": log}, tmp_path / "c.png", keys=["loss"])
    (ax,) = drawn[0].axes
    train, ref = ax.get_lines()
    assert ref.get_label() == "fixed loss at Δ = 0" and ref.get_linestyle() == ":" and ref.get_color() == train.get_color()
    assert_allclose(ref.get_ydata(), [1.3133, 1.3133])
    assert legend_texts(ax) == ["fixed", "train", "loss at Δ = 0"]


def test_plot_reliability(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(1)
    gap = rng.normal(1.0, 2.0, 300)
    cals = {
        "human (both ways)": calibration(gap),
        "gold": calibration(gap, outcome=(gap + rng.normal(0, 1, 300)) > 0),
    }
    out = tmp_path / "reliability.png"
    assert_real_png(plot_reliability(cals, out), out)
    (fig,) = drawn
    (ax,) = fig.axes
    diagonal, *runs = ax.get_lines()
    assert list(diagonal.get_xdata()) == [0.0, 1.0] and list(diagonal.get_ydata()) == [0.0, 1.0]
    assert len(runs) == 2
    for line, dots, cal in zip(runs, ax.collections, cals.values()):
        p, frac = [b.p_mean for b in cal.bins], [b.frac_positive for b in cal.bins]
        assert_allclose(line.get_xdata(), p)
        assert_allclose(line.get_ydata(), frac)
        assert_allclose(dots.get_offsets(), np.column_stack([p, frac]))
        assert_allclose(dots.get_sizes(), [20.0 + 300.0 * b.n / cal.n for b in cal.bins])  # area ~ share of points
        assert tuple(dots.get_facecolor()[0][:3]) == to_rgba(line.get_color())[:3]
    assert legend_texts(ax) == ["perfect calibration"] + [
        f"{name} (ECE={cal.ece:.3f}, Brier={cal.brier:.3f})" for name, cal in cals.items()]
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)
