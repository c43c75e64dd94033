"""Label margin (Llama 2, arXiv:2307.09288 sec. 3.2.2): m_i from the data's own grades.

Two sources:
- `score_gap`: m_i = scale * (score_chosen - score_rejected), e.g. UltraFeedback's 1-10 ratings,
  optionally mapped first through `table` (a rating-level table: Llama 2 maps "significantly
  better / better / slightly better / negligibly better" to 3, 2, 1, 0, or to 1, 2/3, 1/3, 0);
  a table lookup uses the score gap rounded to the nearest integer, and a level missing from the
  table is an error.
- `margin`: m_i = scale * the data's `margin` column.
The result is clipped to [min_margin, max_margin] when those are set. Signed gaps are kept by
default: where ratings are independent of the label (noisy raters), a negative gap says "this
label is doubtful", and the BT optimum stays rank-consistent (see docs/margins.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from marginkit.margins._util import clip, require_finite
from marginkit.margins.base import MarginInputs, Margins, MarginSetup

__all__ = ["LabelMarginConfig", "LabelMargin"]


@dataclass
class LabelMarginConfig:
    source: Literal["score_gap", "margin"] = field(
        default="score_gap", metadata={"help": "Where m comes from: the score difference or the data's margin column."}
    )
    scale: float = field(default=1.0, metadata={"help": "Multiplier applied to the label (after the table)."})
    table: dict[int, float] | None = field(
        default=None, metadata={"help": "Optional level table: rounded score gap -> margin, e.g. {0: 0, 1: 1, 2: 2, 3: 3}."}
    )
    min_margin: float | None = field(default=None, metadata={"help": "Lower clip of m (None: no clip)."})
    max_margin: float | None = field(default=None, metadata={"help": "Upper clip of m (None: no clip)."})

    def __post_init__(self) -> None:
        if self.min_margin is not None and self.max_margin is not None and self.min_margin > self.max_margin:
            raise ValueError(f"label margin: min_margin={self.min_margin} > max_margin={self.max_margin}")


class LabelMargin:
    def __init__(self, config: LabelMarginConfig | None = None) -> None:
        self.config = config or LabelMarginConfig()
        self.needs = frozenset({"score_gap" if self.config.source == "score_gap" else "label_margin"})

    @torch.no_grad()
    def __call__(self, inputs: MarginInputs) -> Margins:
        cfg = self.config
        label = inputs.score_gap if cfg.source == "score_gap" else inputs.label_margin
        require_finite(label, "label", "a score gap" if cfg.source == "score_gap" else "a margin column")
        if cfg.table is not None:
            label = self._lookup(label.round())
        margin = clip(cfg.scale * label.to(inputs.reward_gap.dtype), cfg.min_margin, cfg.max_margin)
        return Margins(margin, torch.ones_like(margin, dtype=torch.bool))

    def _lookup(self, levels: torch.Tensor) -> torch.Tensor:
        table = self.config.table or {}
        missing = sorted({int(v) for v in levels.tolist()} - set(table))
        if missing:
            raise ValueError(f"label margin: score-gap levels {missing} are not in table {table}; add them")
        return torch.tensor([float(table[int(v)]) for v in levels.tolist()], dtype=levels.dtype)

    def prepare(self, setup: MarginSetup) -> None:
        """Nothing to precompute."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
