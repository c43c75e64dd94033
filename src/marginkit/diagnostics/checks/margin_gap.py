"""Monitor check `margin_gap`: target margins far larger than the gaps the model produces (issue 4).

Margins the model cannot reach keep every pair in the high-loss regime and push reward scores apart,
which destabilises them (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward
Modeling", arXiv 2401.06080).

Thresholds (issue 14). A MiniLM run on UltraFeedback (126 steps) kept its target margins about 5x the
learned gaps on 80% of pairs from start to end; the old fixed wait (100 warm-up steps + 50 in a row) could
never fire on it, and its min_exceeds 0.9 / ratio 5 missed it too. Now ratio 4 and min_exceeds 0.75 catch
that pattern, and the wait scales with the run: warm-up a quarter of the planned steps, patience 40% of
them (at most 100 and 50, at least 10 steps in a row), so only a mismatch that lasts a large share of the
run alerts. The healthy demo runs (fixed 1.0, label 0.5 x score gap, oracle; 189 steps) stay silent:
their gaps reach a third or more of the margin by step ~70 (tests/test_monitor.py).
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
    ratio: float = field(default=4.0, metadata={"help": "Far larger: the mean margin over active pairs exceeds this "
                                                "many times max(rewards/margins, min_gap)."})
    min_gap: float = field(default=0.1, metadata={"help": "Floor of the gap in that ratio (gaps start at 0)."})
    min_exceeds: float = field(default=0.75, metadata={"help": "And m > gap on at least this fraction of active "
                                                       "pairs."})
    patience: int = field(default=50, metadata={"help": "Consecutive such steps before the alert (at most; a "
                                                "shorter run waits patience_fraction of its steps)."})
    warmup_steps: int = field(default=100, metadata={"help": "Steps not counted at the start (gaps start at 0; at "
                                                     "most: a shorter run skips warmup_fraction of its steps)."})
    patience_fraction: float = field(default=0.4, metadata={
        "help": "With the run's planned steps T known: patience is min(patience, max(min_patience, this x T))."})
    warmup_fraction: float = field(default=0.25, metadata={
        "help": "With T known: warm-up is min(warmup_steps, this x T)."})
    min_patience: int = field(default=10, metadata={"help": "The least patience when it scales with T."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})

    def scaled(self, total_steps: int | None) -> tuple[int, int]:
        """(warm-up steps, patience) for a run of `total_steps` planned steps (None: unknown, the fixed
        values). A 126-step run: warm-up min(100, 31.5) = 31, patience min(50, max(10, 50.4)) = 50, so it can
        alert from step 81; from 400 steps on, the fixed 100 and 50."""
        if total_steps is None:
            return self.warmup_steps, self.patience
        warmup = min(self.warmup_steps, int(self.warmup_fraction * total_steps))
        patience = min(self.patience, max(self.min_patience, int(self.patience_fraction * total_steps)))
        return warmup, patience


def _active_means(m: Mapping[str, float]) -> tuple[float, float]:
    """(mean m over active pairs, fraction of active pairs with m > Δ): inactive pairs log m = 0."""
    active = m["target_margins/active_fraction"]
    return m["target_margins/mean"] / active, m["diagnostics/margin_exceeds_gap"] / active


def _far(row: Row, cfg: MarginGapConfig, warmup: int) -> bool:
    m = row.metrics
    if any(k not in m for k in _NEEDED) or m["target_margins/active_fraction"] <= 0 or row.step <= warmup:
        return False
    margin, exceeds = _active_means(m)
    return margin > cfg.ratio * max(m["rewards/margins"], cfg.min_gap) and exceeds >= cfg.min_exceeds


def margin_gap(window: Window, cfg: MarginGapConfig) -> Finding | None:
    """Fires when the last `patience` or more rows in a row, the current one included, are past the
    warm-up and have a mean margin over active pairs above `ratio` · max(rewards/margins, min_gap) with
    m > Δ on at least `min_exceeds` of active pairs. Warm-up and patience scale with the run's planned
    steps when the window knows them (`MarginGapConfig.scaled`). A row without target margins (or with
    no active pair) breaks the run.
    """
    warmup, patience = cfg.scaled(window.total_steps)
    n = trailing_run(window.rows, lambda r: _far(r, cfg, warmup))
    if n < patience:
        return None
    margin, exceeds = _active_means(window.now.metrics)
    return Finding({"margin": margin, "rewards/margins": window.now.metrics["rewards/margins"],
                    "exceeds_fraction": exceeds, "steps": float(n)})
