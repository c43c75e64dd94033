"""The data ledger: every input row ends as kept, truncated or dropped, and is counted.

Nothing is dropped silently (TRL's reward trainer filters over-long pairs without a count): every
loader and the tokeniser write here, and the run folder and console get the totals.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marginkit.atomic import write_text_atomic

__all__ = ["Ledger"]

_MAX_EXAMPLES = 20  # examples kept per reason, so a 1M-row problem does not fill memory


@dataclass
class Ledger:
    """Counts of what happened to input rows, with a few located examples per reason."""

    rows_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)  # "prompt_left", "response_right", ...
    truncated_tokens: Counter = field(default_factory=Counter)
    expanded: int = 0  # extra pairs produced from rankings / lists
    merged: int = 0  # rows pooled into an earlier row's group (formats with one response per row)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # Facts about kept pairs worth a count (e.g. "with_margin": pairs carrying a margin value) and one-line
    # notes, each written once per ledger (e.g. how conversations without a chat template were rendered).
    counts: Counter = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)

    def read(self, n: int = 1) -> None:
        self.rows_read += n

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def drop(self, reason: str, where: str = "") -> None:
        self.dropped[reason] += 1
        self._example(f"dropped: {reason}", where)

    def truncate(self, side: str, n_tokens: int, where: str = "") -> None:
        """Record that `n_tokens` were cut from `side` (e.g. "prompt_left") of one pair."""
        self.truncated[side] += 1
        self.truncated_tokens[side] += n_tokens
        self._example(f"truncated: {side}", where)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def note(self, key: str, text: str) -> None:
        """Record a one-line note under `key`; a later note with the same key is ignored (said once)."""
        self.notes.setdefault(key, text)

    def _example(self, key: str, where: str) -> None:
        if where:
            bucket = self.examples.setdefault(key, [])
            if len(bucket) < _MAX_EXAMPLES:
                bucket.append(where)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "kept": self.kept,
            "expanded": self.expanded,
            "merged": self.merged,
            "dropped": dict(self.dropped),
            "truncated": dict(self.truncated),
            "truncated_tokens": dict(self.truncated_tokens),
            "examples": self.examples,
            "counts": dict(self.counts),
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One human-readable paragraph for the console, then one line per note."""
        parts = [f"{self.rows_read} rows read, {self.kept} pairs kept"]
        if self.merged:
            parts.append(f"{self.merged} rows pooled into earlier rows' groups")
        if self.expanded:
            parts.append(f"{self.expanded} extra pairs from rankings")
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.dropped.items())))
        else:
            parts.append("none dropped")
        if self.truncated:
            parts.append(
                "truncated: "
                + ", ".join(
                    f"{k} x{v} ({self.truncated_tokens[k]} tokens)" for k, v in sorted(self.truncated.items())
                )
            )
        if self.counts.get("with_margin"):
            parts.append(f"{self.counts['with_margin']} pairs carry a margin value")
        return "; ".join(parts) + "".join(f"\nNOTE {text}" for text in self.notes.values())  # one line each

    def write(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")  # atomic: a full disk leaves the old file
