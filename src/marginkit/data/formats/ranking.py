r"""Rankings and graded lists expanded into pairs: one prompt with K responses ordered by scores or ranks.

Row shapes (field names are options):
- {"prompt", "responses": [K texts], "scores": [K numbers]}: higher score is better; the scores
  are copied into score_chosen/score_rejected, so label margins follow from score differences.
- {"prompt", "responses": [K texts], "ranks": [K numbers]}: rank 1 is best. Ranks only order the
  responses; no scores are invented from them (metadata keeps each side's rank).
- {"prompt", "chosen": text, "rejected": [K texts]}: one chosen against K rejected, giving K pairs
  and no scores. The rejected are unordered among themselves, so "all_pairs" and "best_vs_rest"
  both give the K chosen-vs-rejected pairs, and "adjacent" (which needs a full order) is an error.

Policies, on the responses sorted best first (equal grades keep their order in the list):
- all_pairs:    every two responses, K(K-1)/2 candidate pairs.
- best_vs_rest: the best against each other one, K-1 (the first of equal bests is "the best").
- adjacent:     each response against the next in sorted order, K-1.

Ties (equal grades) have no chosen response. `ties="drop"` leaves them out and counts each in the
ledger as 'tie (dropped by ties="drop")'; `ties="keep"` emits them with the earlier response in the
list as chosen, a score gap of 0 (when graded) and metadata["tie"] = True. Either way the number of
candidate pairs per row is fixed by K and the policy; every candidate beyond one per row is counted
in `ledger.expanded`. Each pair's metadata["pair"] holds the list positions [chosen, rejected].

Worked example (run as a test): two equal best responses and one worse.

>>> record = {"prompt": "Name a colour.", "responses": ["red", "blue", "green"], "scores": [3, 1, 3]}
>>> out = convert(record, RankingOptions(policy="all_pairs", ties="drop"))
>>> [(p.chosen, p.rejected, p.score_gap, p.metadata["pair"]) for p in out.pairs]
[('red', 'blue', 2.0, [0, 1]), ('green', 'blue', 2.0, [2, 1])]
>>> out.dropped
('tie (dropped by ties="drop")',)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from types import MappingProxyType
from typing import Any, Literal

from marginkit.data.formats._base import Converted, Graded, as_prompt, get_field, has_field, leftovers
from marginkit.data.formats.native import record_id
from marginkit.data.schema import Message, Pair
from marginkit.data.validate import RowError, show_value

__all__ = [
    "POLICIES",
    "Policy",
    "PromptMismatch",
    "RankingOptions",
    "Ties",
    "convert",
    "detect",
    "expand",
    "expand_group",
    "graded_number",
]

Policy = Literal["all_pairs", "best_vs_rest", "adjacent"]
Ties = Literal["drop", "keep"]
PromptMismatch = Literal["invalid", "use_first"]
TIE_DROPPED = 'tie (dropped by ties="drop")'


def _all_pairs(ranked: list[int]) -> list[tuple[int, int]]:
    return list(combinations(ranked, 2))


def _best_vs_rest(ranked: list[int]) -> list[tuple[int, int]]:
    return [(ranked[0], other) for other in ranked[1:]]


def _adjacent(ranked: list[int]) -> list[tuple[int, int]]:
    return list(zip(ranked, ranked[1:]))


# policy -> the (better, worse) position pairs it takes from the best-first order
POLICIES: Mapping[str, Callable[[list[int]], list[tuple[int, int]]]] = MappingProxyType(
    {"all_pairs": _all_pairs, "best_vs_rest": _best_vs_rest, "adjacent": _adjacent}
)


@dataclass(frozen=True)
class RankingOptions:
    """Field names, and the expansion policy (see the module docstring)."""

    prompt_field: str = "prompt"
    responses_field: str = "responses"
    scores_field: str = "scores"
    ranks_field: str = "ranks"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    id_field: str | None = None
    policy: Policy = "all_pairs"
    ties: Ties = "drop"


def detect(record: Mapping[str, Any]) -> bool:
    if "prompt" not in record:
        return False
    graded = isinstance(record.get("responses"), list) and ("scores" in record or "ranks" in record)
    return graded or (isinstance(record.get("chosen"), str) and isinstance(record.get("rejected"), list))


def graded_number(value: Any, field_name: str) -> float:
    """A score or rank as a float; booleans, strings and non-finite values raise RowError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(field_name, "not a number", value)
    if not math.isfinite(value):
        raise RowError(field_name, "not finite", value)
    return float(value)


def _pair(
    prompt: Any, responses: Sequence[Graded], better: int, worse: int, pair_id: str | None, metadata: Mapping[str, Any]
) -> Pair:
    hi, lo = responses[better], responses[worse]
    extra: dict[str, Any] = {**metadata, "pair": [better, worse]}
    if hi.order == lo.order:
        extra["tie"] = True
    for side, response in (("chosen", hi), ("rejected", lo)):
        if response.info:
            extra[f"{side}_info"] = response.info
        if response.prompt is not None and response.prompt != prompt:
            extra[f"{side}_prompt"] = response.prompt
    return Pair(prompt, hi.text, lo.text, score_chosen=hi.score, score_rejected=lo.score, id=pair_id, metadata=extra)


def expand(
    prompt: str | tuple[Message, ...],
    responses: Sequence[Graded],
    policy: Policy,
    ties: Ties,
    pair_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Converted:
    """The pairs `policy` takes from graded responses; ties dropped (with one reason each) or kept.

    Every pair gets `pair_id` (the loader appends "/k", k the pair's place in the row) and a copy of
    `metadata` plus "pair", and "tie", "chosen_info", "rejected_info", "chosen_prompt",
    "rejected_prompt" where they apply.
    """
    if len(responses) < 2:
        raise RowError(None, "fewer than 2 responses, so no pair", len(responses))
    ranked = sorted(range(len(responses)), key=lambda i: (-responses[i].order, i))  # best first, stable
    pairs, dropped = [], []
    for better, worse in POLICIES[policy](ranked):
        if responses[better].order == responses[worse].order and ties == "drop":
            dropped.append(TIE_DROPPED)
            continue
        pairs.append(_pair(prompt, responses, better, worse, pair_id, metadata or {}))
    return Converted(pairs=tuple(pairs), dropped=tuple(dropped))


def expand_group(
    key: Any, responses: Sequence[Graded], policy: Policy, ties: Ties, prompt_mismatch: PromptMismatch
) -> Converted:
    """Expand responses pooled from several rows under one key (grouped formats).

    The pooled responses should answer the same prompt. When they do not, "invalid" makes the
    group one invalid unit, and "use_first" takes the first response's prompt for every pair and
    keeps each side's own prompt in metadata["chosen_prompt"] / ["rejected_prompt"] when it differs.
    """
    first = responses[0].prompt
    distinct = len({repr(r.prompt) for r in responses})
    if distinct > 1 and prompt_mismatch == "invalid":
        raise RowError(
            "prompt", "responses pooled under one key answer different prompts", key,
            detail=f"{distinct} distinct prompts among {len(responses)} responses",
            hint='pass prompt_mismatch="use_first" to pair them under the first prompt anyway',
        )
    return expand(first, responses, policy, ties, metadata={"group": key})


def _graded_list(record: Mapping[str, Any], options: RankingOptions) -> tuple[list[Graded], tuple[str, ...]]:
    texts = get_field(record, options.responses_field)
    use_scores = has_field(record, options.scores_field)
    grade_field = options.scores_field if use_scores else options.ranks_field
    grades = get_field(record, grade_field)
    if not isinstance(texts, list) or not isinstance(grades, list) or len(texts) != len(grades):
        raise RowError(
            grade_field, f"expected two lists of the same length ({options.responses_field}, {grade_field})",
            detail=f"{options.responses_field}: {show_value(texts, 40)}, {grade_field}: {show_value(grades, 40)}",
        )
    numbers = [graded_number(g, f"{grade_field}[{k}]") for k, g in enumerate(grades)]
    if use_scores:
        responses = [Graded(text, order=s, score=s) for text, s in zip(texts, numbers)]
    else:
        responses = [Graded(text, order=-r, info={"rank": g}) for text, r, g in zip(texts, numbers, grades)]
    return responses, (options.responses_field, grade_field)


def _one_vs_rest(record: Mapping[str, Any], options: RankingOptions) -> tuple[list[Graded], tuple[str, ...]]:
    rejected = get_field(record, options.rejected_field)
    if not isinstance(rejected, list):
        raise RowError(options.rejected_field, "expected a list of responses", rejected)
    if options.policy == "adjacent":
        raise RowError(
            options.rejected_field, 'policy "adjacent" needs a full order, and the rejected responses are unordered',
            hint='use policy="all_pairs" or "best_vs_rest" (both give one pair per rejected response)',
        )
    chosen = Graded(get_field(record, options.chosen_field), order=1.0)
    return [chosen] + [Graded(text, order=0.0) for text in rejected], (options.chosen_field, options.rejected_field)


def convert(record: Mapping[str, Any], options: RankingOptions) -> Converted:
    if has_field(record, options.responses_field):
        responses, consumed = _graded_list(record, options)
        policy = options.policy
    else:
        responses, consumed = _one_vs_rest(record, options)
        policy = "best_vs_rest"  # the only order the row states: chosen above each rejected
    pair_id = None
    if options.id_field is not None:
        pair_id = record_id(get_field(record, options.id_field))
        consumed += (options.id_field,)
    metadata = leftovers(record, (options.prompt_field, *consumed))
    prompt = as_prompt(get_field(record, options.prompt_field), options.prompt_field)
    return expand(prompt, responses, policy, options.ties, pair_id, metadata)
