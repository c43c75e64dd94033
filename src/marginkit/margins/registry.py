"""The margin-strategy registry and the `margin:` section of a run config.

Adding a strategy: one file in margins/, one line in MARGINS, one field in MarginSpec, one test.
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

__all__ = ["MARGINS", "MarginSpec", "build_margin"]

# name -> strategy class; each class takes its config dataclass (the MarginSpec field of the same name).
MARGINS: dict[str, Any] = {
    "none": NoMargin,
    "fixed": FixedMargin,
    "label": LabelMargin,
    "oracle": OracleMargin,
    "ot": OTMargin,
    "confidence": ConfidenceMargin,
}


@dataclass
class MarginSpec:
    """Which margin strategy to train with, and each strategy's options."""

    name: Literal["none", "fixed", "label", "oracle", "confidence", "ot"] = field(
        default="none", metadata={"help": "Margin strategy: none (plain BT), fixed, label, oracle, confidence, ot."}
    )
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
