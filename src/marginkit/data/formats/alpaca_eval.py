r"""AlpacaEval judge annotations, pooled per instruction into graded lists (Dubois et al. 2024, arXiv 2404.04475).

Each row compares a model's output_2 with a reference output_1 on one instruction:
{"instruction", "output_1", "generator_1", "output_2", "generator_2", "preference": float in [1, 2], ...}.
p = preference - 1 is the judge's probability that output_2 beats output_1 (for the weighted
GPT-4-turbo annotator it comes from the verdict token's log-probabilities). Rows are pooled by
instruction, so reading the annotation files of several models (all against the same reference)
gives per instruction one graded list: each model's response scored against the common reference.

Scores (`score`): "logit" gives each model logit(p), p clipped to [1e-9, 1 - 1e-9], and the
reference logit(0.5) = 0, so under Bradley-Terry the score gap of any two responses is their
log-odds (the margin PROVENANCE.md uses); "probability" gives p and 0.5. `include_reference`
decides whether the reference response joins the list. Responses are keyed by generator name:
the reference appears once per file and is merged, and a generator with two different outputs
(or scores) for one instruction makes the pool invalid. Each pool is expanded like a ranking row
(`policy`, `ties`: see ranking.py); pairs carry {"generator", "preference"} and the row's other
fields (dataset, annotator, raw_completion, ...) in metadata["chosen_info"] / ["rejected_info"].

Worked example (run as a test): one model judged 80% likely to beat the reference.

>>> row = {"instruction": "Say hi.", "output_1": "Hello.", "generator_1": "ref",
...        "output_2": "Hi!", "generator_2": "model", "preference": 1.8}
>>> options = AlpacaEvalOptions()
>>> out = convert(row, options)
>>> [(g.text, round(g.score, 4)) for g in out.responses]
[('Hello.', 0.0), ('Hi!', 1.3863)]
>>> pair, = finish_group(out.group, list(out.responses), options).pairs
>>> pair.chosen, pair.rejected, round(pair.score_gap, 4)
('Hi!', 'Hello.', 1.3863)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from marginkit.data.formats._base import Converted, Graded, get_field, leftovers, text_field
from marginkit.data.formats.ranking import Policy, Ties, expand_group, graded_number
from marginkit.data.validate import RowError

__all__ = ["AlpacaEvalOptions", "convert", "detect", "finish_group"]

_CLIP = 1e-9  # as in PROVENANCE.md's margin count; logit(1e-9) = -20.7


@dataclass(frozen=True)
class AlpacaEvalOptions:
    """Field names, the score scale, and how pools become pairs."""

    instruction_field: str = "instruction"
    output_fields: tuple[str, ...] = ("output_1", "output_2")
    generator_fields: tuple[str, ...] = ("generator_1", "generator_2")
    preference_field: str = "preference"
    score: Literal["logit", "probability"] = "logit"
    include_reference: bool = True
    policy: Policy = "all_pairs"
    ties: Ties = "drop"

    def __post_init__(self) -> None:
        if len(self.output_fields) != 2 or len(self.generator_fields) != 2:
            raise ValueError(
                f"alpaca_eval: output_fields={self.output_fields!r} and generator_fields={self.generator_fields!r} "
                "must each name two fields: (reference, model)"
            )


def detect(record: Mapping[str, Any]) -> bool:
    return {"instruction", "output_1", "output_2", "preference"} <= set(record)


def _logit(p: float) -> float:
    p = min(max(p, _CLIP), 1.0 - _CLIP)
    return math.log(p) - math.log1p(-p)


def _probability(p: float) -> float:
    return p


# score option -> p -> score; read-only
_SCALES: Mapping[str, Callable[[float], float]] = MappingProxyType({"logit": _logit, "probability": _probability})


def convert(record: Mapping[str, Any], options: AlpacaEvalOptions) -> Converted:
    instruction = text_field(record, options.instruction_field)
    p = graded_number(get_field(record, options.preference_field), options.preference_field) - 1.0
    if not 0.0 <= p <= 1.0:
        raise RowError(options.preference_field, "outside [1, 2]", p + 1.0)
    to_score = _SCALES[options.score]
    (ref_out, model_out), (ref_gen, model_gen) = options.output_fields, options.generator_fields
    extra = leftovers(record, (options.instruction_field, *options.output_fields, *options.generator_fields))
    model_info = {"generator": get_field(record, model_gen), **extra}
    model = Graded(get_field(record, model_out), order=to_score(p), score=to_score(p), info=model_info, prompt=instruction)
    reference = Graded(
        get_field(record, ref_out), order=to_score(0.5), score=to_score(0.5),
        info={"generator": get_field(record, ref_gen)}, prompt=instruction,
    )
    responses = (reference, model) if options.include_reference else (model,)
    return Converted(group=instruction, responses=responses)


def finish_group(key: Hashable, responses: list[Graded], options: AlpacaEvalOptions) -> Converted:
    by_generator: dict[Any, Graded] = {}
    for response in responses:
        name = response.info["generator"]
        seen = by_generator.setdefault(name, response)
        if (seen.text, seen.score) != (response.text, response.score):
            raise RowError(
                "output", "one generator has two different outputs or scores for this instruction", name,
                hint="read each model's annotation file once, all against the same reference",
            )
    return expand_group(key, list(by_generator.values()), options.policy, options.ties, "invalid")
