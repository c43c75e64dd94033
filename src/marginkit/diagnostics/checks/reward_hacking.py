"""Monitor check `reward_hacking` (online RL on the gold world): the reward the policy is trained on rises
while the gold reward falls.

Reads `reward` (the RM's, or whatever `reward` names) and `gold/reward` (logged only when the prompts come
from the gold world). docs/rl.md's GRPO run against a small BT RM: RM reward 0.48 -> 1.94 while the gold
reward fell from +0.09 to -4.12 (over-optimisation, Gao et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, trend

__all__ = ["RewardHackingConfig", "reward_hacking"]


@dataclass
class RewardHackingConfig:
    enabled: bool = field(default=True, metadata={"help": "RL: check for the trained-on reward rising while "
                                                  "gold/reward falls (runs that log gold/reward only)."})
    window: int = field(default=20, metadata={"help": "Steps of the straight-line fits of reward and gold/reward."})
    min_slope: float = field(default=0.001, metadata={"help": "Each fit's slope must be beyond this (reward units "
                                                      "per step): reward's above +min_slope, gold's below -min_slope."})
    min_trend: float = field(default=0.5, metadata={"help": "Each fit's correlation with the step must be at least "
                                                    "this in size (a steady trend, not noise)."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def reward_hacking(window: Window, cfg: RewardHackingConfig) -> Finding | None:
    """Fires when the last `window` rows that log `reward` and `gold/reward` (the current one included; fewer:
    no finding) have least-squares slopes (window.trend) of reward > `min_slope` and of gold/reward <
    -`min_slope`, with correlations >= `min_trend` and <= -`min_trend`.
    """
    if "reward" not in window.now.metrics or "gold/reward" not in window.now.metrics:
        return None
    rows = window.having("reward", "gold/reward")[-cfg.window:]
    if len(rows) < cfg.window:
        return None
    slope, corr = trend([r.metrics["reward"] for r in rows])
    gold_slope, gold_corr = trend([r.metrics["gold/reward"] for r in rows])
    if not (slope > cfg.min_slope and corr >= cfg.min_trend
            and gold_slope < -cfg.min_slope and gold_corr <= -cfg.min_trend):
        return None
    n = len(rows) - 1
    return Finding({"reward": rows[-1].metrics["reward"], "gold/reward": rows[-1].metrics["gold/reward"],
                    "reward_slope": slope, "gold_slope": gold_slope},
                   {"rise": slope * n, "fall": -gold_slope * n, "window": cfg.window})
