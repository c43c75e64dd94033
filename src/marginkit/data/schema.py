"""The one preference-pair schema every loader converts into, and the input error it raises.

A `Pair` is (prompt, chosen, rejected) plus optional graded information: a label margin given
directly, chosen/rejected scores (ratings), and gold rewards (known only in synthetic worlds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Message", "Pair", "DataError", "prompt_text"]

Message = dict[str, str]  # {"role": ..., "content": ...}


class DataError(ValueError):
    """Bad input, located: names the file, the row (0-based) and the field, shows the value."""

    def __init__(self, source: str, row: int | None, field_name: str | None, problem: str, hint: str = ""):
        self.source, self.row, self.field, self.problem = source, row, field_name, problem
        where = source
        if row is not None:
            where += f" row {row}"
        if field_name is not None:
            where += f', field "{field_name}"'
        msg = f"{where}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


@dataclass(frozen=True)
class Pair:
    """One preference pair.

    prompt:          the context, as text or as a list of chat messages (rendered at tokenisation).
    chosen/rejected: the preferred and the dispreferred response text.
    margin:          a label margin given directly by the data (e.g. a Llama-2 preference level
                     already mapped to a number), or None.
    score_chosen/score_rejected: graded ratings of each response (e.g. UltraFeedback 1-10), or None.
    gold_chosen/gold_rejected:   true rewards, known only in a synthetic world, or None.
    id:              a stable identifier (used in error messages and the data ledger).
    metadata:        anything else from the source row, carried through untouched.
    """

    prompt: str | tuple[Message, ...]
    chosen: str
    rejected: str
    margin: float | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    gold_chosen: float | None = None
    gold_rejected: float | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def score_gap(self) -> float:
        """score_chosen - score_rejected, NaN when the pair has no scores."""
        if self.score_chosen is None or self.score_rejected is None:
            return math.nan
        return self.score_chosen - self.score_rejected

    @property
    def gold_gap(self) -> float:
        """gold_chosen - gold_rejected, NaN outside a gold-reward world."""
        if self.gold_chosen is None or self.gold_rejected is None:
            return math.nan
        return self.gold_chosen - self.gold_rejected

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict in marginkit's native format (what `load_pairs` reads back)."""
        rec: dict[str, Any] = {
            "prompt": list(self.prompt) if isinstance(self.prompt, tuple) else self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        for name in ("margin", "score_chosen", "score_rejected", "gold_chosen", "gold_rejected", "id"):
            value = getattr(self, name)
            if value is not None:
                rec[name] = value
        if self.metadata:
            rec["metadata"] = self.metadata
        return rec


def prompt_text(prompt: str | tuple[Message, ...]) -> str:
    """Plain-text rendering of a prompt, used where no chat template applies."""
    if isinstance(prompt, str):
        return prompt
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt)
