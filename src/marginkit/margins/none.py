"""No margin: plain Bradley-Terry, m = 0 for every pair (the baseline every margin is judged against)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from marginkit.margins.base import MarginInputs, Margins, MarginSetup

__all__ = ["NoMarginConfig", "NoMargin"]


@dataclass
class NoMarginConfig:
    """Plain BT has no options."""


class NoMargin:
    needs: frozenset[str] = frozenset()

    def __init__(self, config: NoMarginConfig | None = None) -> None:
        self.config = config or NoMarginConfig()

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        zeros = torch.zeros_like(inputs.reward_gap)
        return Margins(zeros, torch.zeros_like(zeros, dtype=torch.bool))

    def prepare(self, setup: MarginSetup) -> None:
        """Nothing to precompute."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
