r"""marginkit's own pair format: the record `Pair.to_record()` writes (also TRL's standard explicit-prompt shape).

Fields: "prompt" (a string, or a list of {"role", "content"} messages), "chosen" and "rejected"
(strings), and optionally "margin", "score_chosen", "score_rejected", "gold_chosen",
"gold_rejected", "id" and "metadata" (a dict). An integer id becomes its string. Any other field is
added to metadata (a name already in metadata raises, rather than one value silently winning).
Reading `Pair.to_record()` back gives the same Pair.

Worked example (run as a test):

>>> record = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9.0,
...           "score_rejected": 2.0, "id": 7, "source": "quiz"}
>>> pair, = convert(record, NativeOptions()).pairs
>>> pair.to_record()
{'prompt': '2+2?', 'chosen': '4', 'rejected': '5', 'score_chosen': 9.0, 'score_rejected': 2.0, 'id': '7', 'metadata': {'source': 'quiz'}}
>>> pair.score_gap
7.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marginkit.data.formats._base import Converted, as_prompt, get_field, leftovers
from marginkit.data.schema import Pair
from marginkit.data.validate import RowError

__all__ = ["NATIVE_FIELDS", "NativeOptions", "convert", "detect"]

_NUMBERS = ("margin", "score_chosen", "score_rejected", "gold_chosen", "gold_rejected")
NATIVE_FIELDS = ("prompt", "chosen", "rejected", *_NUMBERS, "id", "metadata")


@dataclass(frozen=True)
class NativeOptions:
    """The native format has no options: its field names are fixed by `Pair.to_record()`."""


def detect(record: Mapping[str, Any]) -> bool:
    """Only native fields, with string responses (extra fields fall to the "trl" or "scores" format).

    Scores kept only under metadata (as in the UltraFeedback subset) are left to the "scores" format.
    """
    metadata = record.get("metadata")
    scores_in_metadata = isinstance(metadata, dict) and "score_chosen" in metadata and "score_chosen" not in record
    return (
        set(record) <= set(NATIVE_FIELDS)
        and {"prompt", "chosen", "rejected"} <= set(record)
        and isinstance(record["chosen"], str)
        and isinstance(record["rejected"], str)
        and not scores_in_metadata
    )


def record_id(value: Any) -> Any:
    """An id as Pair keeps it: integers become strings, None stays None, anything else is validated later."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def convert(record: Mapping[str, Any], options: NativeOptions) -> Converted:
    metadata = record.get("metadata", {})
    extras = leftovers(record, NATIVE_FIELDS)
    if isinstance(metadata, dict) and extras:
        clash = sorted(set(metadata) & set(extras))
        if clash:
            raise RowError("metadata", "a metadata key is also a top-level field", clash)
        metadata = {**metadata, **extras}
    pair = Pair(
        prompt=as_prompt(get_field(record, "prompt"), "prompt"),
        chosen=get_field(record, "chosen"),
        rejected=get_field(record, "rejected"),
        **{name: record.get(name) for name in _NUMBERS},
        id=record_id(record.get("id")),
        metadata=metadata,
    )
    return Converted(pairs=(pair,))
