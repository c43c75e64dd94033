"""Monitor check `margin_gap`: target margins far larger than the gaps the model produces (issue 4).

Margins the model cannot reach keep every pair in the high-loss regime and push reward scores apart,
which destabilises them (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward
Modeling", arXiv 2401.06080).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Row, Window, trailing_run

__all__ = ["MarginGapConfig", "margin_gap"]

_NEEDED = ("target_margins/mean", "target_margins/active_fraction", "rewards/margins", "diagnostics/margin_exceeds_gap")


@dataclass
class MarginGapConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for target margins far larger than the gaps the "
                                                  "model produces (needs target_margins/*)."})
    ratio: float = field(default=5.0, metadata={"help": "Far larger: the mean margin over active pairs exceeds this "
                                                "many times max(rewards/margins, min_gap)."})
    min_gap: float = field(default=0.1, metadata={"help": "Floor of the gap in that ratio (gaps start at 0)."})
    min_exceeds: float = field(default=0.9, metadata={"help": "And m > gap on at least this fraction of active pairs."})
    patience: int = field(default=50, metadata={"help": "Consecutive such steps before the alert."})
    warmup_steps: int = field(default=100, metadata={"help": "Steps not counted at the start (gaps start at 0)."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def _active_means(m: Mapping[str, float]) -> tuple[float, float]:
    """(mean m over active pairs, fraction of active pairs with m > Δ): inactive pairs log m = 0."""
    active = m["target_margins/active_fraction"]
    return m["target_margins/mean"] / active, m["diagnostics/margin_exceeds_gap"] / active


def _far(row: Row, cfg: MarginGapConfig) -> bool:
    m = row.metrics
    if any(k not in m for k in _NEEDED) or m["target_margins/active_fraction"] <= 0 or row.step <= cfg.warmup_steps:
        return False
    margin, exceeds = _active_means(m)
    return margin > cfg.ratio * max(m["rewards/margins"], cfg.min_gap) and exceeds >= cfg.min_exceeds


def margin_gap(window: Window, cfg: MarginGapConfig) -> Finding | None:
    """Fires when the last `patience` or more rows in a row, the current one included, are past
    `warmup_steps` and have a mean margin over active pairs above `ratio` · max(rewards/margins, min_gap)
    with m > Δ on at least `min_exceeds` of active pairs. A row without target margins (or with no active
    pair) breaks the run.
    """
    n = trailing_run(window.rows, lambda r: _far(r, cfg))
    if n < cfg.patience:
        return None
    margin, exceeds = _active_means(window.now.metrics)
    return Finding({"margin": margin, "rewards/margins": window.now.metrics["rewards/margins"],
                    "exceeds_fraction": exceeds, "steps": float(n)})
