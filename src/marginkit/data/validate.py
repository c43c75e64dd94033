"""Validation of preference pairs, and the located `Problem` every loader reports through.

A `Problem` is one thing wrong with one row or pair: the field, a short fixed description (the
reason counted in the ledger, so it never contains the value), the value itself (shown truncated),
and, once located, the file and the 0-based row. Converters raise `RowError` (an unlocated problem)
when a row cannot become pairs; `load_pairs` locates it and either raises `DataError` or counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Real
from typing import Any

from marginkit.data.schema import DataError, Pair

__all__ = ["NO_VALUE", "Problem", "RowError", "show_value", "validate_pair"]



class _NoValue:
    """Sentinel type: the field is absent, or no single value is at fault."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()
_SHOW_CHARS = 80


def show_value(value: Any, limit: int = _SHOW_CHARS) -> str:
    """repr(value), cut to `limit` characters with the total length noted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


@dataclass(frozen=True)
class Problem:
    """One located (or not yet located) problem with one row or pair.

    field:   the field at fault ("chosen", "metadata.score_chosen", ...), None for the whole row.
    problem: a fixed description, e.g. "empty or whitespace-only"; with `field` it is the ledger reason.
    value:   the offending value, NO_VALUE when the field is missing or no single value is at fault.
    detail:  row-specific text (a parser message, the fields present) that is shown but not counted.
    hint:    how to fix it, when there is something better to say than on_invalid="skip".
    """

    field: str | None
    problem: str
    value: Any = NO_VALUE
    detail: str = ""
    hint: str = ""
    source: str | None = None
    row: int | None = None

    def at(self, source: str, row: int | None) -> Problem:
        return replace(self, source=source, row=row)

    @property
    def reason(self) -> str:
        """The ledger key: field and fixed description, never the value."""
        return f"{self.field}: {self.problem}" if self.field else self.problem

    @property
    def where(self) -> str:
        """"file row N", the location form used in the ledger."""
        return f"{self.source} row {self.row}" if self.row is not None else str(self.source)

    def message(self) -> str:
        """The problem with its detail and the value shown, without the location."""
        text = self.problem
        if self.detail:
            text += f" ({self.detail})"
        if self.value is not NO_VALUE:
            text += f": got {show_value(self.value)}"
        return text

    def error(self, hint: str = "") -> DataError:
        """A DataError naming file, row and field; `hint` follows this problem's own hint."""
        hints = "; ".join(h for h in (self.hint, hint) if h)
        return DataError(self.source or "<input>", self.row, self.field, self.message(), hints)

    def describe(self) -> str:
        """One console line: location, field, message."""
        return str(self.error())


class RowError(Exception):
    """Raised by a converter when a row cannot become pairs; `load_pairs` adds file and row."""

    def __init__(self, field: str | None, problem: str, value: Any = NO_VALUE, detail: str = "", hint: str = ""):
        self.problem = Problem(field, problem, value, detail, hint)
        super().__init__(self.problem.describe())


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_text(field: str, value: Any) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(field, "wrong type, expected a string", value, detail=type(value).__name__)]
    if not value.strip():
        return [Problem(field, "empty or whitespace-only", value)]
    return []


def _check_prompt(value: Any) -> list[Problem]:
    if isinstance(value, str):
        return _check_text("prompt", value)
    if not isinstance(value, tuple):
        return [Problem("prompt", "wrong type, expected a string or a tuple of messages", value, type(value).__name__)]
    if not value:
        return [Problem("prompt", "empty message list", value)]
    for k, message in enumerate(value):
        ok = isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"].strip()
        if not ok or not isinstance(message.get("content"), str):
            return [Problem(f"prompt[{k}]", 'not a message {"role": str, "content": str}', message)]
    if not any(m["content"].strip() for m in value):
        return [Problem("prompt", "every message is empty or whitespace-only", value)]
    return []


def _check_numbers(pair: Pair) -> list[Problem]:
    problems = []
    for name in ("margin", "score_chosen", "score_rejected", "gold_chosen", "gold_rejected"):
        value = getattr(pair, name)
        if value is None:
            continue
        if not _is_number(value):
            problems.append(
                Problem(name, "not a number", value, hint="store numbers, not strings or booleans, in the file")
            )
        elif not math.isfinite(value):
            problems.append(Problem(name, "not finite", value))
    for first, second in (("score_chosen", "score_rejected"), ("gold_chosen", "gold_rejected")):
        if (getattr(pair, first) is None) != (getattr(pair, second) is None):
            given, missing = (first, second) if getattr(pair, second) is None else (second, first)
            problems.append(Problem(missing, f"missing while {given} is given", getattr(pair, given)))
    return problems


def validate_pair(pair: Pair) -> list[Problem]:
    """Every problem with one pair (empty list: valid), in field order; none is located yet.

    Checks: prompt is a non-blank string or a non-empty tuple of {"role", "content"} messages;
    chosen and rejected are non-blank strings and differ; margin, scores and gold rewards are None
    or finite real numbers (bool is not a number), and scores/gold come in chosen+rejected twos;
    id is None or a string; metadata is a dict.
    """
    problems = _check_prompt(pair.prompt) + _check_text("chosen", pair.chosen) + _check_text("rejected", pair.rejected)
    if isinstance(pair.chosen, str) and pair.chosen == pair.rejected and pair.chosen.strip():
        problems.append(Problem("rejected", "identical to chosen", pair.rejected))
    problems += _check_numbers(pair)
    if pair.id is not None and not isinstance(pair.id, str):
        problems.append(Problem("id", "wrong type, expected a string", pair.id))
    if not isinstance(pair.metadata, dict):
        problems.append(Problem("metadata", "wrong type, expected a dict", pair.metadata, type(pair.metadata).__name__))
    return problems
