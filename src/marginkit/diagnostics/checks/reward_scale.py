"""Monitor check `reward_scale`: reward models' |rewards| growing without bound.

BT constrains only reward differences, so nothing stops rewards drifting together; a steady drift often
means the reward is read at a padding position and depends on length (a padding-side bug).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, trend

__all__ = ["RewardScaleConfig", "reward_scale"]


@dataclass
class RewardScaleConfig:
    enabled: bool = field(default=True, metadata={"help": "RMs: check for mean |reward| growing without bound "
                                                  "(skipped when the step logs logps/chosen)."})
    max_abs: float = field(default=100.0, metadata={"help": "Alert when the scale max(|rewards/chosen|, "
                                                    "|rewards/rejected|) exceeds this."})
    growth_factor: float = field(default=4.0, metadata={"help": "Also alert when the scale grew this many times "
                                                        "over `window` steps (steadily, to at least min_abs)."})
    window: int = field(default=100, metadata={"help": "Steps over which growth is measured."})
    min_abs: float = field(default=5.0, metadata={"help": "A growing scale alerts only once at least this large."})
    min_trend: float = field(default=0.8, metadata={"help": "Steady growth: correlation of the scale with the step "
                                                    "at least this."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def _scale(m: Mapping[str, float]) -> float:
    return max(abs(m["rewards/chosen"]), abs(m["rewards/rejected"]))


def reward_scale(window: Window, cfg: RewardScaleConfig) -> Finding | None:
    """The scale s = max(|rewards/chosen|, |rewards/rejected|). Fires when the current s > `max_abs`, or when
    s >= `min_abs`, s >= `growth_factor` times s `window` rows earlier and the last window + 1 values of s
    correlate with the step at least `min_trend`. Reads rows that log both rewards and not logps/chosen
    (policy runs' implicit rewards are log-ratios, watched by `explosion` and `chosen_logps`).
    """
    now = window.now.metrics
    if "logps/chosen" in now or "rewards/chosen" not in now or "rewards/rejected" not in now:
        return None
    scale = _scale(now)
    values = {"scale": scale, "rewards/chosen": now["rewards/chosen"], "rewards/rejected": now["rewards/rejected"]}
    fields = {"max_abs": cfg.max_abs, "window": cfg.window}
    if scale > cfg.max_abs:
        return Finding(values, fields, variant="above")
    scales = [_scale(r.metrics) for r in window.having("rewards/chosen", "rewards/rejected")
              if "logps/chosen" not in r.metrics][-(cfg.window + 1):]
    if len(scales) <= cfg.window or scale < cfg.min_abs:
        return None
    earlier = scales[0]
    if scale < cfg.growth_factor * earlier or trend(scales)[1] < cfg.min_trend:
        return None
    ratio = scale / earlier if earlier > 0 else math.inf
    return Finding({**values, "scale@-window": earlier}, {**fields, "ratio": ratio}, variant="growth")
