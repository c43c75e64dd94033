"""Monitor check `kl_blowup` (online RL): the per-token KL to the reference above a limit, or growing fast.

Reads `kl`, the mean per-token KL(π ‖ π_ref) estimate an RL step logs (train/rl_step.py; absent with
beta = 0, when there is no reference). docs/rl.md's over-optimised GRPO run passed 5 nats per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window

__all__ = ["KLBlowupConfig", "kl_blowup"]


@dataclass
class KLBlowupConfig:
    enabled: bool = field(default=True, metadata={"help": "RL: check for a per-token KL to the reference (kl) "
                                                  "above a limit or growing fast."})
    max_kl: float = field(default=1.0, metadata={"help": "Per-token KL (nats) counted as blown up."})
    patience: int = field(default=3, metadata={"help": "Consecutive steps above max_kl before the alert."})
    growth_factor: float = field(default=10.0, metadata={"help": "Growing fast: kl at least this many times its "
                                                         "value window steps earlier."})
    window: int = field(default=20, metadata={"help": "Steps over which growth is measured."})
    min_kl: float = field(default=0.1, metadata={"help": "A fast-growing kl alerts only once at least this large "
                                                 "(KL starts at 0, so any growth from 0 is infinite)."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def kl_blowup(window: Window, cfg: KLBlowupConfig) -> Finding | None:
    """Fires when the last `patience` rows that log `kl` (the current one included) are all above `max_kl`
    ("above"), or when the current kl is at least `min_kl` and at least `growth_factor` times the kl `window`
    rows earlier, or that earlier kl was <= 0 ("growth"). Rows without `kl` are not read.
    """
    if "kl" not in window.now.metrics:
        return None
    kls = [r.metrics["kl"] for r in window.having("kl")]
    kl = kls[-1]
    run = 0
    for v in reversed(kls):
        if v <= cfg.max_kl:
            break
        run += 1
    earlier = kls[-(cfg.window + 1)] if len(kls) > cfg.window else None
    growing = earlier is not None and kl >= cfg.min_kl and (earlier <= 0 or kl >= cfg.growth_factor * earlier)
    above = run >= cfg.patience
    if not (above or growing):
        return None
    values = {"kl": kl}
    if earlier is not None:
        values[f"kl@-{cfg.window}"] = earlier
    ratio = kl / earlier if earlier and earlier > 0 else math.inf
    return Finding(values, {"max_kl": cfg.max_kl, "steps": run, "ratio": ratio, "window": cfg.window},
                   variant="above" if above else "growth")
