"""Monitor check `explosion`: the gap beyond a healthy range, or growing fast, while loss -> 0 and
accuracy -> 1: reward hacking that looks like convergence.

The signature and the defaults are seed 001's (issue 5): a raw log-ratio gap of 56.9, 240.7, 599.2 at
steps 30, 70, 150 with batch size 1, where a healthy one is about 1-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, first_present

__all__ = ["ExplosionConfig", "explosion"]


@dataclass
class ExplosionConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for an exploding gap while loss -> 0, accuracy -> 1."})
    gap_metrics: list[str] = field(
        default_factory=lambda: ["logratios/gap_raw", "rewards/margins"],
        metadata={"help": "Gap metric to watch: the first of these the step logs (DPO: the raw, unscaled log-ratio "
                  "gap; RM: the reward gap)."})
    max_gap: float = field(default=20.0, metadata={"help": "Gap beyond the healthy range (about 1-10, seed 001)."})
    growth_factor: float = field(default=3.0, metadata={"help": "Growing fast: the gap is at least this many times "
                                                        "its value growth_window steps earlier."})
    growth_window: int = field(default=20, metadata={"help": "Steps over which growth is measured."})
    min_gap: float = field(default=10.0, metadata={"help": "A fast-growing gap alerts only once at least this large."})
    max_loss: float = field(default=0.05, metadata={"help": "Both rules need a saturated run: loss at most this."})
    min_accuracy: float = field(default=0.95, metadata={"help": "Both rules need a saturated run: "
                                                        "rewards/accuracies at least this."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def explosion(window: Window, cfg: ExplosionConfig) -> Finding | None:
    """Fires when the current row is saturated (loss <= max_loss, rewards/accuracies >= min_accuracy) and
    its gap (the first of `gap_metrics` it logs) is above `max_gap`, or is at least `min_gap` and at least
    `growth_factor` times the gap `growth_window` rows earlier (or that earlier gap was <= 0). Only rows
    that log a gap metric, loss and rewards/accuracies are read.
    """
    now = window.now.metrics
    name = first_present(now, cfg.gap_metrics)
    if name is None or "loss" not in now or "rewards/accuracies" not in now:
        return None
    gaps = [r.metrics[n] for r in window.having("loss", "rewards/accuracies")
            if (n := first_present(r.metrics, cfg.gap_metrics)) is not None][-(cfg.growth_window + 1):]
    gap = now[name]
    saturated = now["loss"] <= cfg.max_loss and now["rewards/accuracies"] >= cfg.min_accuracy
    earlier = gaps[0] if len(gaps) == cfg.growth_window + 1 else None
    growing = earlier is not None and gap >= cfg.min_gap and (earlier <= 0 or gap >= cfg.growth_factor * earlier)
    if not saturated or not (gap > cfg.max_gap or growing):
        return None
    values = {name: gap, "loss": now["loss"], "rewards/accuracies": now["rewards/accuracies"]}
    if earlier is not None:
        values[f"{name}@-{cfg.growth_window}"] = earlier
    ratio = gap / earlier if earlier and earlier > 0 else math.inf
    return Finding(values, {"name": name, "gap": gap, "max_gap": cfg.max_gap, "ratio": ratio,
                            "window": cfg.growth_window}, variant="above" if gap > cfg.max_gap else "growth")
