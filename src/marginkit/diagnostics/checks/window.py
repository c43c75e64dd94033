"""The metric window every monitor check reads, the finding a check returns, and their small helpers.

A `Window` is the recent optimiser steps' metric rows, oldest first, `rows[-1]` being the step just
taken (the same reduced per-step means `metrics.jsonl` logs, names as in docs/metrics.md), plus the two
facts about the run's start a check may compare with: step 1's loss (when this run observed step 1) and
the expected initial loss. Checks are pure functions `(Window, their config) -> Finding | None`; the
monitor (diagnostics/monitor.py) keeps the window and turns findings into alerts with the message table
(diagnostics/checks/messages.py).

A check reads only the rows that carry the metrics it needs (`Window.having`); rows of one run carry the
same metrics, so in practice that is every row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

__all__ = ["ACTION_HELP", "LN2", "Action", "Finding", "Row", "Window", "first_present", "start_losses", "trailing_run", "trend"]

LN2 = math.log(2.0)
Action = Literal["warn", "stop"]  # every check's `action` option: what the monitor does with its finding
ACTION_HELP = "warn: print and record the alert; stop: also end the run (no checkpoint) with MonitorStopError."


class Row(NamedTuple):
    """One optimiser step: its number (1 for the first) and its reduced metrics."""

    step: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Window:
    """The last rows the monitor kept, oldest first (rows[-1] is the current step), and the run's start.

    first_loss: step 1's loss if this run observed step 1 (None after a resume past it).
    expected_initial_loss: the step-1 loss the setup implies: a number, the name of a metric the step logs
        that holds it (an RM with a zero head: "diagnostics/loss_at_zero_gap"), or None when unknown.
    total_steps: the run's planned optimizer steps when the trainer said (None: unknown); a check that waits
        a number of steps may scale that wait to the run (margin_gap does).
    first: step 1's metrics if this run observed step 1 (empty otherwise); entropy_collapse compares with it.
    """

    rows: Sequence[Row]
    first_loss: float | None = None
    expected_initial_loss: float | str | None = None
    total_steps: int | None = None
    first: Mapping[str, float] = field(default_factory=dict)

    @property
    def now(self) -> Row:
        return self.rows[-1]

    def having(self, *names: str) -> list[Row]:
        """The rows that log every metric in `names`, oldest first."""
        return [r for r in self.rows if all(n in r.metrics for n in names)]

    def expected_loss(self, metrics: Mapping[str, float]) -> float | None:
        """The expected initial loss as a number (read from `metrics` when it names a metric)."""
        if isinstance(self.expected_initial_loss, str):
            return metrics.get(self.expected_initial_loss)
        return self.expected_initial_loss


@dataclass(frozen=True)
class Finding:
    """What a check found: `values` are the numbers behind it (the alert's `values`, alerts.jsonl); they
    and `fields` (names and numbers only the message shows) fill the check's message template
    (messages.py); `variant` picks a phrasing where the template has more than one (e.g. "above" a
    limit vs "growth" over a window)."""

    values: dict[str, float]
    fields: dict[str, Any] = field(default_factory=dict)
    variant: str = ""


def start_losses(window: Window, metrics: Mapping[str, float], tolerance: float) -> list[str]:
    """Which starting values the loss in `metrics` is within `tolerance` of, by name (for the message):
    ln 2, the first-step loss, the expected initial loss; empty when none."""
    anchors = {"ln 2": LN2}
    if window.first_loss is not None:
        anchors["the first-step loss"] = window.first_loss
    expected = window.expected_loss(metrics)
    if expected is not None:
        anchors["the expected initial loss"] = expected
    return [name for name, v in anchors.items() if abs(metrics["loss"] - v) <= tolerance]


def trailing_run(rows: Sequence[Row], holds: Callable[[Row], bool]) -> int:
    """How many of the last rows in a row satisfy `holds` (0 when the last one does not)."""
    n = 0
    for row in reversed(rows):
        if not holds(row):
            break
        n += 1
    return n


def first_present(metrics: Mapping[str, float], names: Sequence[str]) -> str | None:
    """The first of `names` that `metrics` logs, or None."""
    return next((n for n in names if n in metrics), None)


def trend(values: Sequence[float]) -> tuple[float, float]:
    """(slope per step, Pearson correlation with the step index) of equally spaced values; corr 0 if flat.

    Example: 1, 3, 5 -> (2, 1); 2, 0, 2 -> (0, 0).
    """
    n = len(values)
    xs = [i - (n - 1) / 2 for i in range(n)]
    mean = sum(values) / n
    sxx = sum(x * x for x in xs)
    sxy = sum(x * (v - mean) for x, v in zip(xs, values))
    syy = sum((v - mean) ** 2 for v in values)
    slope = sxy / sxx
    corr = sxy / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return slope, corr
