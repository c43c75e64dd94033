"""Monitor check `slow_start`: the loss still at its start and the mean reward gap still ~0 after many
steps although gradients flow (that is not `stuck`).

Seen in this project: a MiniLM RM with a zero head at lr 2e-5 sat 56 steps at 0.6931 with gaps of 1e-5
and ended its epoch at chance accuracy (docs/monitor.md, docs/study_real.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import (
    ACTION_HELP,
    Action,
    Finding,
    Window,
    start_losses,
    trailing_run,
)

__all__ = ["SlowStartConfig", "slow_start"]


@dataclass
class SlowStartConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for a loss still at its initial value, and a reward "
                                                  "gap still ~0, after many steps although gradients flow."})
    steps: int = field(default=50, metadata={"help": "Consecutive such steps before the alert."})
    loss_tolerance: float = field(default=0.005, metadata={"help": "|loss - initial| (or |loss - ln 2|) counted as 'at'."})
    max_gap: float = field(default=0.01, metadata={"help": "|rewards/margins| (the mean reward gap) counted as ~0."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def slow_start(window: Window, cfg: SlowStartConfig, zero_grad_norm: float) -> Finding | None:
    """Fires when the last `cfg.steps` or more rows that log loss, grad_norm and rewards/margins, the current
    one included, all have the loss within `loss_tolerance` of a starting value, |rewards/margins| at most
    `max_gap`, and grad_norm above `zero_grad_norm` (the gradient norm `stuck` counts as zero: the monitor
    passes `stuck.max_grad_norm`, so the two checks never claim the same steps). Rows without those metrics
    neither count nor break the run.
    """
    needed = ("loss", "grad_norm", "rewards/margins")
    if any(k not in window.now.metrics for k in needed):
        return None

    def flat(m: Mapping[str, float]) -> bool:
        return (bool(start_losses(window, m, cfg.loss_tolerance)) and abs(m["rewards/margins"]) <= cfg.max_gap
                and m["grad_norm"] > zero_grad_norm)

    n = trailing_run(window.having(*needed), lambda r: flat(r.metrics))
    if n < cfg.steps:
        return None
    m = window.now.metrics
    return Finding({"loss": m["loss"], "reward_gap": m["rewards/margins"], "grad_norm": m["grad_norm"],
                    "steps": float(n)})
