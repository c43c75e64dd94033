"""Monitor check `stuck`: the loss sits at its starting value with a zero gradient, so nothing learns.

Seen with beta = 0, a reference that shares the policy's weights, frozen parameters, a graph cut by
.detach() or no_grad, and identical chosen and rejected responses (docs/monitor.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import (
    ACTION_HELP,
    Action,
    Finding,
    Window,
    start_losses,
    trailing_run,
)

__all__ = ["StuckConfig", "stuck"]


@dataclass
class StuckConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for a loss that stays at its initial value "
                                                  "with no gradient."})
    steps: int = field(default=10, metadata={"help": "Consecutive stuck steps before the alert."})
    loss_tolerance: float = field(default=0.005, metadata={"help": "|loss - initial| (or |loss - ln 2|) counted as 'at'."})
    max_grad_norm: float = field(default=1e-4, metadata={"help": "Gradient norm (before clipping) counted as zero."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def stuck(window: Window, cfg: StuckConfig) -> Finding | None:
    """Fires when the last `cfg.steps` or more rows that log loss and grad_norm, the current one included,
    all have the loss within `loss_tolerance` of a starting value (`start_losses`) and grad_norm at most
    `max_grad_norm`. Rows without those metrics neither count nor break the run.
    """
    if "loss" not in window.now.metrics or "grad_norm" not in window.now.metrics:
        return None
    rows = window.having("loss", "grad_norm")
    n = trailing_run(rows, lambda r: bool(start_losses(window, r.metrics, cfg.loss_tolerance))
                     and r.metrics["grad_norm"] <= cfg.max_grad_norm)
    if n < cfg.steps:
        return None
    m = window.now.metrics
    return Finding({"loss": m["loss"], "grad_norm": m["grad_norm"], "steps": float(n)},
                   {"anchor": start_losses(window, m, cfg.loss_tolerance)[0]})
