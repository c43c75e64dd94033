"""Margin strategies: one file each, behind one interface (base.py), looked up in registry.py."""

from marginkit.margins.base import MarginInputs, Margins, MarginSetup, MarginStrategy, check_margin_shape
from marginkit.margins.registry import MARGINS, MarginSpec, build_margin

__all__ = ["MARGINS", "MarginInputs", "MarginSetup", "MarginSpec", "MarginStrategy", "Margins", "build_margin", "check_margin_shape"]
