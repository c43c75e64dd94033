r"""Pairwise human comparisons among K responses in one row, as in FineGrainedRLHF qa-feedback (Wu et al. 2023, arXiv 2306.01693).

Row shape (field names are options): a prompt field ("question"), K response fields ("prediction 1"
.. "prediction 4"), and a preference list with one code per pair of responses, in the order of
`itertools.combinations(range(K), 2)`: for K = 4 that is (1v2, 1v3, 1v4, 2v3, 2v4, 3v4), the order
given in the repo's tasks/qa_feedback/data/README.md. Codes: 1 = the first of the two preferred,
2 = the second preferred, 0 = no preference (a tie). Any other code makes the row invalid.

Each strict comparison is one pair, with no scores (the data says which, not by how much). Ties
follow `ties` as in the ranking format: "drop" counts each as 'tie (dropped by ties="drop")',
"keep" emits it with the first of the two as chosen and metadata["tie"] = True. Every comparison
beyond one per row is counted in `ledger.expanded`. Other fields (passages, gold, feedback) are
carried into each pair's metadata; the prompt is the question alone, so add the passages to it
yourself if the reward model should see them. metadata["pair"] holds the 0-based response positions.

Worked example (run as a test), K = 3:

>>> record = {"question": "Capital of France?", "prediction 1": "Paris.", "prediction 2": "Lyon.",
...           "prediction 3": "It is Paris.", "preference": [1, 0, 2]}
>>> options = FineGrainedOptions(response_fields=("prediction 1", "prediction 2", "prediction 3"))
>>> out = convert(record, options)
>>> [(p.chosen, p.rejected, p.metadata["pair"]) for p in out.pairs]
[('Paris.', 'Lyon.', [0, 1]), ('It is Paris.', 'Lyon.', [2, 1])]
>>> out.dropped
('tie (dropped by ties="drop")',)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from marginkit.data.formats._base import Converted, as_prompt, get_field, leftovers
from marginkit.data.formats.native import record_id
from marginkit.data.formats.ranking import TIE_DROPPED, Ties
from marginkit.data.schema import Pair
from marginkit.data.validate import RowError

__all__ = ["FineGrainedOptions", "convert", "detect"]

_FIRST, _SECOND, _TIE = 1, 2, 0  # the preference codes of the FineGrainedRLHF README


@dataclass(frozen=True)
class FineGrainedOptions:
    """Field names and the tie policy."""

    prompt_field: str = "question"
    response_fields: tuple[str, ...] = ("prediction 1", "prediction 2", "prediction 3", "prediction 4")
    preference_field: str = "preference"
    id_field: str | None = None
    ties: Ties = "drop"


def detect(record: Mapping[str, Any]) -> bool:
    return isinstance(record.get("preference"), list) and "prediction 1" in record and "prediction 2" in record


def _order(code: Any, first: int, second: int, field_name: str) -> tuple[int, int]:
    """(chosen, rejected) positions for one comparison code; a tie keeps the listed order."""
    orders = {_FIRST: (first, second), _SECOND: (second, first), _TIE: (first, second)}
    if isinstance(code, bool) or code not in orders:
        raise RowError(field_name, "unknown preference code (expected 1, 2 or 0)", code)
    return orders[code]


def convert(record: Mapping[str, Any], options: FineGrainedOptions) -> Converted:
    texts = [get_field(record, name) for name in options.response_fields]
    codes = get_field(record, options.preference_field)
    comparisons = list(combinations(range(len(texts)), 2))
    if not isinstance(codes, list) or len(codes) != len(comparisons):
        raise RowError(
            options.preference_field, f"expected a list of {len(comparisons)} codes for {len(texts)} responses", codes
        )
    consumed = (options.prompt_field, *options.response_fields, options.preference_field)
    pair_id = None
    if options.id_field is not None:
        pair_id = record_id(get_field(record, options.id_field))
        consumed += (options.id_field,)
    prompt = as_prompt(get_field(record, options.prompt_field), options.prompt_field)
    metadata = leftovers(record, consumed)
    pairs, dropped = [], []
    for k, ((first, second), code) in enumerate(zip(comparisons, codes)):
        better, worse = _order(code, first, second, f"{options.preference_field}[{k}]")
        tie = code == _TIE
        if tie and options.ties == "drop":
            dropped.append(TIE_DROPPED)
            continue
        extra = {**metadata, "pair": [better, worse], **({"tie": True} if tie else {})}
        pairs.append(Pair(prompt, texts[better], texts[worse], id=pair_id, metadata=extra))
    return Converted(pairs=tuple(pairs), dropped=tuple(dropped))
