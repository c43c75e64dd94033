"""Margin strategies: one file each, behind one interface (base.py), looked up in registry.py."""

from marginkit.margins.base import (
    MarginInputs,
    Margins,
    MarginSetup,
    MarginStrategy,
    ScoreRM,
    check_margin_shape,
    target_margins,
)
from marginkit.margins.registry import MARGINS, MarginName, MarginSpec, build_margin

__all__ = ["MARGINS", "MarginInputs", "MarginName", "MarginSetup", "MarginSpec", "MarginStrategy", "Margins", "ScoreRM",
           "build_margin", "check_margin_shape", "target_margins"]
