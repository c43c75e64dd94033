"""Source-format converters, one file each, looked up by name in FORMATS; `detect_format` for format="auto".

Adding a format: one file in formats/ (options dataclass, `detect`, `convert` with a worked example
in its docstring, and `finish_group` if rows are pooled), one line in FORMATS, one entry in
`_DETECTION_ORDER` if it can be recognised from a record, and a section in docs/data.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from marginkit.data.formats import alpaca_eval, finegrained, hh, native, prometheus, ranking, scores, trl
from marginkit.data.formats._base import Converted, Format, Graded, build_options

__all__ = ["FORMATS", "Converted", "Format", "Graded", "build_options", "detect_format"]

# name -> format; read-only so that no caller can change the registry behind another's back
FORMATS: Mapping[str, Format] = MappingProxyType(
    {
        "native": Format(
            "marginkit's own records (Pair.to_record): prompt, chosen, rejected + optional numbers",
            native.NativeOptions, native.detect, native.convert,
        ),
        "trl": Format(
            "TRL preference data: standard or conversational, explicit or implicit prompt",
            trl.TrlOptions, trl.detect, trl.convert,
        ),
        "hh": Format(
            "Anthropic HH-RLHF: chosen/rejected full '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues",
            hh.HHOptions, hh.detect, hh.convert,
        ),
        "scores": Format(
            "pairs with score_chosen/score_rejected fields (UltraFeedback-binarized)",
            scores.ScoresOptions, scores.detect, scores.convert,
        ),
        "ranking": Format(
            "one prompt with K scored or ranked responses, or one chosen and K rejected",
            ranking.RankingOptions, ranking.detect, ranking.convert,
        ),
        "finegrained": Format(
            "K responses with pairwise preference codes per row (FineGrainedRLHF qa-feedback)",
            finegrained.FineGrainedOptions, finegrained.detect, finegrained.convert,
        ),
        "prometheus": Format(
            "one judge-scored response per row, pooled by question (Prometheus eval sets)",
            prometheus.PrometheusOptions, prometheus.detect, prometheus.convert, prometheus.finish_group,
        ),
        "alpaca_eval": Format(
            "AlpacaEval model-vs-reference annotations, pooled per instruction",
            alpaca_eval.AlpacaEvalOptions, alpaca_eval.detect, alpaca_eval.convert, alpaca_eval.finish_group,
        ),
    }
)

# Most specific first: native only matches records with nothing but native fields, HH dialogues are
# also valid implicit-prompt TRL rows, and score fields or response lists outrank the plain TRL shape.
_DETECTION_ORDER = ("native", "hh", "scores", "ranking", "trl", "finegrained", "prometheus", "alpaca_eval")


def detect_format(first_record: Mapping[str, Any]) -> str:
    """The name of the first format (in `_DETECTION_ORDER`) whose `detect` accepts the record.

    Detection looks at default field names only; data with other field names needs `format=` and
    the field options. Raises ValueError listing the formats when none matches.
    """
    for name in _DETECTION_ORDER:
        if FORMATS[name].detect(first_record):
            return name
    listing = "; ".join(f"{name}: {fmt.summary}" for name, fmt in FORMATS.items())
    raise ValueError(
        f"no known format matches a record with fields {sorted(first_record)}; pass format= one of "
        f"{sorted(FORMATS)} with its field options ({listing})"
    )
