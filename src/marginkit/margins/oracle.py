"""Oracle margin (gold-reward worlds only): m_i = scale * (g(x, y_c) - g(x, y_r)), the true reward gap.

The upper reference for any estimated margin: it knows how much better the chosen response really
is. Only synthetic worlds have gold rewards; on other data the strategy refuses at setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from marginkit.margins._util import clip, require_finite
from marginkit.margins.base import MarginInputs, Margins, MarginSetup

__all__ = ["OracleMarginConfig", "OracleMargin"]


@dataclass
class OracleMarginConfig:
    scale: float = field(default=1.0, metadata={"help": "Multiplier on the true reward gap."})
    min_margin: float | None = field(default=None, metadata={"help": "Lower clip of m (None: no clip)."})
    max_margin: float | None = field(default=None, metadata={"help": "Upper clip of m (None: no clip)."})


class OracleMargin:
    needs: frozenset[str] = frozenset({"gold_gap"})

    def __init__(self, config: OracleMarginConfig | None = None) -> None:
        self.config = config or OracleMarginConfig()

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        require_finite(inputs.gold_gap, "oracle", "gold rewards (only gold-reward worlds have them)")
        cfg = self.config
        margin = clip(cfg.scale * inputs.gold_gap.to(inputs.reward_gap.dtype), cfg.min_margin, cfg.max_margin)
        return Margins(margin, torch.ones_like(margin, dtype=torch.bool))

    def prepare(self, setup: MarginSetup) -> None:
        """Nothing to precompute."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
