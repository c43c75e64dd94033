r"""Pairs with a score per response, as in UltraFeedback-binarized (Cui et al. 2023, arXiv 2310.01377).

The texts are read as in the "trl" format (any of its four shapes, plus a string prompt with
message-list responses as in HuggingFaceH4/ultrafeedback_binarized), and two numeric fields become
`score_chosen` and `score_rejected`, so the label margin score_chosen - score_rejected follows.
Score fields are named by option and may be dotted paths into nested dicts ("metadata.score_chosen").
Left unset, each is the first present of "score_chosen" and "metadata.score_chosen" (likewise for
rejected), which covers trl-lib/ultrafeedback_binarized and the 1,200-pair subset in shared/data.
`id_field` names a field to use as the pair id (an integer id becomes its string). Every field not
consumed is carried into the pair's metadata.

Scores are taken as they are: a row with score_chosen < score_rejected is kept (the label says
which response was chosen; the scores are another judge). Equal scores (a gap of 0) are kept too;
what a zero label margin means is the margin strategy's business.

Worked example (run as a test):

>>> record = {"prompt": "Name a prime.", "chosen": "7", "rejected": "8", "source_index": 12,
...           "metadata": {"score_chosen": 9.5, "score_rejected": 3.0}}
>>> pair, = convert(record, ScoresOptions(id_field="source_index")).pairs
>>> pair.to_record()
{'prompt': 'Name a prime.', 'chosen': '7', 'rejected': '8', 'score_chosen': 9.5, 'score_rejected': 3.0, 'id': '12'}
>>> pair.score_gap
6.5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marginkit.data.formats._base import Converted, get_field, has_field, leftovers
from marginkit.data.formats.native import record_id
from marginkit.data.formats.trl import resolve_texts
from marginkit.data.schema import Pair
from marginkit.data.validate import RowError

__all__ = ["ScoresOptions", "convert", "detect"]


@dataclass(frozen=True)
class ScoresOptions:
    """Field names (dotted paths allowed); None for a score field means the default search above."""

    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    score_chosen_field: str | None = None
    score_rejected_field: str | None = None
    id_field: str | None = None


def _default_path(record: Mapping[str, Any], name: str) -> str:
    for path in (name, f"metadata.{name}"):
        if has_field(record, path):
            return path
    raise RowError(name, "missing field", detail=f'looked for "{name}" and "metadata.{name}"; fields: {sorted(record)}')


def detect(record: Mapping[str, Any]) -> bool:
    if "chosen" not in record or "rejected" not in record:
        return False
    return any(
        has_field(record, f"{prefix}score_chosen") and has_field(record, f"{prefix}score_rejected")
        for prefix in ("", "metadata.")
    )


def convert(record: Mapping[str, Any], options: ScoresOptions) -> Converted:
    text_fields = (options.prompt_field, options.chosen_field, options.rejected_field)
    prompt, chosen, rejected = resolve_texts(record, *text_fields)
    chosen_path = options.score_chosen_field or _default_path(record, "score_chosen")
    rejected_path = options.score_rejected_field or _default_path(record, "score_rejected")
    consumed = (*text_fields, chosen_path, rejected_path)
    pair_id = None
    if options.id_field is not None:
        pair_id = record_id(get_field(record, options.id_field))
        consumed += (options.id_field,)
    pair = Pair(
        prompt, chosen, rejected,
        score_chosen=get_field(record, chosen_path),
        score_rejected=get_field(record, rejected_path),
        id=pair_id,
        metadata=leftovers(record, consumed),
    )
    return Converted(pairs=(pair,))
