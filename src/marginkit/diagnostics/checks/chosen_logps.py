"""Monitor check `chosen_logps`: log π(y_c|x) falling steadily while the gap grows (likelihood
displacement: the margin is won by pushing both responses down, the rejected one faster).

Policy runs only (needs `logps/chosen`). Razin et al. 2024 (arXiv 2410.08847) describe the effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, first_present, trend

__all__ = ["ChosenLogpsConfig", "chosen_logps"]


@dataclass
class ChosenLogpsConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for chosen log-probs falling while the gap grows "
                                                  "(policy runs: needs logps/chosen)."})
    window: int = field(default=50, metadata={"help": "Steps the trend is fitted over."})
    min_drop: float = field(default=10.0, metadata={"help": "Fitted fall of logps/chosen over the window, in nats."})
    min_trend: float = field(default=0.8, metadata={"help": "Steady: |correlation| of the value with the step at "
                                                    "least this."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def chosen_logps(window: Window, cfg: ChosenLogpsConfig, gap_metrics: Sequence[str]) -> Finding | None:
    """Fires when, over the last `cfg.window` rows that log logps/chosen and a gap (the first of
    `gap_metrics` a row logs: the monitor passes `explosion.gap_metrics`, so both checks watch the same
    gap), a straight-line fit of logps/chosen falls by at least `min_drop` nats with correlation at most
    -`min_trend` while the fit of the gap rises. Silent until that many rows exist.
    """
    now = window.now.metrics
    name = first_present(now, gap_metrics)
    if "logps/chosen" not in now or name is None:
        return None
    rows = [(r.metrics["logps/chosen"], r.metrics[n]) for r in window.having("logps/chosen")
            if (n := first_present(r.metrics, gap_metrics)) is not None][-cfg.window:]
    if len(rows) < cfg.window:
        return None
    slope, corr = trend([logp for logp, _ in rows])
    gap_slope, _ = trend([gap for _, gap in rows])
    drop = -slope * (cfg.window - 1)  # fitted fall over the window, nats
    if drop < cfg.min_drop or corr > -cfg.min_trend or gap_slope <= 0:
        return None
    return Finding({"logps/chosen": now["logps/chosen"], "drop": drop, "correlation": corr, name: now[name]},
                   {"name": name, "window": cfg.window, "rise": gap_slope * (cfg.window - 1)})
