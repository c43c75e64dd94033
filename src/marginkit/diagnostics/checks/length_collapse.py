"""Monitor check `length_collapse` (online RL): every completion has the same length step after step, or
every completion runs into the max_new_tokens cap: the policy has found one length (often the longest) the
reward favours.

Reads `completions/min_length` and `completions/max_length` (the spread, max - min, over a rollout) and
`completions/clipped_ratio` (the fraction of completions cut at the cap), as the RL loop logs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, trailing_run

__all__ = ["LengthCollapseConfig", "length_collapse"]


@dataclass
class LengthCollapseConfig:
    enabled: bool = field(default=True, metadata={"help": "RL: check for completions collapsing to one length "
                                                  "or all hitting max_new_tokens."})
    max_spread: float = field(default=0.0, metadata={"help": "completions/max_length - completions/min_length "
                                                     "(tokens) counted as one length."})
    clipped_ratio: float = field(default=1.0, metadata={"help": "completions/clipped_ratio at or above this counts "
                                                        "as all at the cap (1: every completion truncated)."})
    patience: int = field(default=10, metadata={"help": "Consecutive collapsed steps before the alert."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def _capped(metrics, cfg: LengthCollapseConfig) -> bool:
    return metrics.get("completions/clipped_ratio", 0.0) >= cfg.clipped_ratio


def length_collapse(window: Window, cfg: LengthCollapseConfig) -> Finding | None:
    """Fires when the last `patience` rows that log the min and max lengths (the current one included) all have
    max - min <= `max_spread` ("spread") or completions/clipped_ratio >= `clipped_ratio` ("cap", reported when
    the current row is capped). Rows without the lengths neither count nor break the run.
    """
    names = ("completions/min_length", "completions/max_length")
    if not all(n in window.now.metrics for n in names):
        return None

    def spread(m) -> float:
        return m["completions/max_length"] - m["completions/min_length"]

    n = trailing_run(window.having(*names), lambda r: spread(r.metrics) <= cfg.max_spread or _capped(r.metrics, cfg))
    if n < cfg.patience:
        return None
    m = window.now.metrics
    values = {"completions/min_length": m["completions/min_length"], "completions/max_length": m["completions/max_length"],
              "steps": float(n)}
    if "completions/clipped_ratio" in m:
        values["completions/clipped_ratio"] = m["completions/clipped_ratio"]
    return Finding(values, {"spread": spread(m)}, variant="cap" if _capped(m, cfg) else "spread")
