"""The margin-strategy registry and the `margin:` section of a run config.

Adding a strategy: one file in margins/, one line in MARGINS, one field in MarginSpec, one test.
MARGINS is the one list of names: `MarginName` (the Literal `margin.name` is checked against) and the
help text are built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from marginkit.margins.base import MarginStrategy
from marginkit.margins.confidence import ConfidenceMargin, ConfidenceMarginConfig
from marginkit.margins.fixed import FixedMargin, FixedMarginConfig
from marginkit.margins.label import LabelMargin, LabelMarginConfig
from marginkit.margins.none import NoMargin, NoMarginConfig
from marginkit.margins.oracle import OracleMargin, OracleMarginConfig
from marginkit.margins.ot import OTMargin, OTMarginConfig

__all__ = ["MARGINS", "MarginName", "MarginSpec", "build_margin"]

# name -> strategy class; each class takes its config dataclass (the MarginSpec field of the same name).
MARGINS: dict[str, Any] = {
    "none": NoMargin,
    "fixed": FixedMargin,
    "label": LabelMargin,
    "oracle": OracleMargin,
    "confidence": ConfidenceMargin,
    "ot": OTMargin,
}

MarginName = Literal[tuple(MARGINS)]  # type: ignore[valid-type]  # the registry's names, in its order


@dataclass
class MarginSpec:
    """Which margin strategy to train with, and each strategy's options."""

    name: MarginName = field(default="none", metadata={
        "help": f"Margin strategy, one of {', '.join(MARGINS)} (none: plain BT; docs/margins.md)."})
    fixed: FixedMarginConfig = field(default_factory=FixedMarginConfig)
    label: LabelMarginConfig = field(default_factory=LabelMarginConfig)
    oracle: OracleMarginConfig = field(default_factory=OracleMarginConfig)
    ot: OTMarginConfig = field(default_factory=OTMarginConfig)
    confidence: ConfidenceMarginConfig = field(default_factory=ConfidenceMarginConfig)
    none: NoMarginConfig = field(default_factory=NoMarginConfig)


def build_margin(spec: MarginSpec) -> MarginStrategy:
    """Instantiate the strategy named in `spec` with its own options."""
    if spec.name not in MARGINS:
        raise ValueError(f"unknown margin strategy {spec.name!r}; known: {sorted(MARGINS)}")
    return MARGINS[spec.name](getattr(spec, spec.name))
