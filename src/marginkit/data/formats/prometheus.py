r"""Judge-graded responses, one per row, pooled by question: the Prometheus eval sets (Kim et al. 2024, arXiv 2405.01535).

Each row of prometheus-eval's mt_bench_eval.json / vicuna_eval.json holds one response to one
question, wrapped in the Prometheus judge prompt, and three GPT-4 samples of a 1-5 rubric score:
{"idx", "response_source", "category", "instruction": judge prompt, "gpt4_score": [3 ints], "gpt4_feedback"}.
The converter recovers prompt and response from the judge prompt with `pattern` (a regular
expression with named groups "prompt" and "response"; the default is the one PROVENANCE.md
measured to parse every row), grades the response by the mean of `score_field` (a list is
averaged, a number taken as is), and pools the rows by `group_field`. Once every row is read each
pool of K graded responses is expanded like a ranking row (`policy`, `ties`: see ranking.py), with
the mean scores as score_chosen/score_rejected. The other fields of each row (response_source,
category, gpt4_score, gpt4_feedback) go to metadata["chosen_info"] / ["rejected_info"].

Pooled responses must answer the same prompt. In mt_bench_eval they do not: its 80 questions are
second turns whose dialogue includes each model's own first answer, so the four prompts of a
question differ. `prompt_mismatch="invalid"` (default) makes each such pool one invalid unit;
"use_first" pairs them under the first row's prompt and keeps each side's own prompt in metadata.

Worked example (run as a test):

>>> def judge(question, answer):
...     return (f"###The instruction to evaluate:\n{question}\n\n###Response to evaluate:\n{answer}"
...             "\n\n###Score Rubrics:\n...")
>>> rows = [{"idx": 1, "instruction": judge("Say hi.", "Hi!"), "gpt4_score": [5, 4, 5]},
...         {"idx": 1, "instruction": judge("Say hi.", "No."), "gpt4_score": [1, 2, 1]}]
>>> options = PrometheusOptions()
>>> outs = [convert(row, options) for row in rows]
>>> outs[0].group, outs[0].responses[0].text, round(outs[0].responses[0].score, 3)
(1, 'Hi!', 4.667)
>>> pair, = finish_group(1, [g for out in outs for g in out.responses], options).pairs
>>> pair.prompt, pair.chosen, pair.rejected, round(pair.score_gap, 3)
('Say hi.', 'Hi!', 'No.', 3.333)
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from marginkit.data.formats._base import Converted, Graded, get_field, leftovers, text_field
from marginkit.data.formats.ranking import Policy, PromptMismatch, Ties, expand_group, graded_number
from marginkit.data.validate import RowError

__all__ = ["DEFAULT_PATTERN", "PrometheusOptions", "convert", "detect", "finish_group"]

# From shared/data/prometheus-eval/PROVENANCE.md (measured: every row of both files parses).
DEFAULT_PATTERN = (
    r"###The instruction to evaluate:\n(?P<prompt>.*?)\n\n###Response to evaluate:\n(?P<response>.*?)"
    r"\n\n###(Reference Answer|Score Rubrics)"
)


@dataclass(frozen=True)
class PrometheusOptions:
    """Where prompt, response, score and group key are; how pools become pairs."""

    judge_field: str = "instruction"
    pattern: str = DEFAULT_PATTERN
    score_field: str = "gpt4_score"
    group_field: str = "idx"
    policy: Policy = "all_pairs"
    ties: Ties = "drop"
    prompt_mismatch: PromptMismatch = "invalid"


def detect(record: Mapping[str, Any]) -> bool:
    return {"idx", "instruction", "gpt4_score"} <= set(record)


def _mean_score(value: Any, field_name: str) -> float:
    if isinstance(value, list):
        if not value:
            raise RowError(field_name, "empty score list", value)
        return sum(graded_number(v, f"{field_name}[{k}]") for k, v in enumerate(value)) / len(value)
    return graded_number(value, field_name)


def convert(record: Mapping[str, Any], options: PrometheusOptions) -> Converted:
    judge = text_field(record, options.judge_field)
    match = re.search(options.pattern, judge, re.DOTALL)
    if match is None:
        raise RowError(options.judge_field, "judge prompt does not match the pattern", judge, hint="adjust pattern=")
    score = _mean_score(get_field(record, options.score_field), options.score_field)
    key = get_field(record, options.group_field)
    if not isinstance(key, Hashable):
        raise RowError(options.group_field, "group key is not hashable", key)
    info = leftovers(record, (options.judge_field, options.group_field))
    response = Graded(match["response"], order=score, score=score, info=info, prompt=match["prompt"])
    return Converted(group=key, responses=(response,))


def finish_group(key: Hashable, responses: list[Graded], options: PrometheusOptions) -> Converted:
    return expand_group(key, responses, options.policy, options.ties, options.prompt_mismatch)
