"""Fixed margin: the same m for every pair, -log σ(Δ - m). A constant target gap, as a sanity baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from marginkit.margins.base import MarginInputs, Margins, MarginSetup

__all__ = ["FixedMarginConfig", "FixedMargin"]


@dataclass
class FixedMarginConfig:
    value: float = field(default=1.0, metadata={"help": "The margin m demanded of every pair (reward units)."})


class FixedMargin:
    needs: frozenset[str] = frozenset()

    def __init__(self, config: FixedMarginConfig | None = None) -> None:
        self.config = config or FixedMarginConfig()

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        margin = torch.full_like(inputs.reward_gap, self.config.value)
        return Margins(margin, torch.ones_like(margin, dtype=torch.bool))

    def prepare(self, setup: MarginSetup) -> None:
        """Nothing to precompute."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
