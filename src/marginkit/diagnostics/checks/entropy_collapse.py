"""Monitor check `entropy_collapse` (online RL): the policy's mean token entropy near zero, or fallen far
below its value at step 1: sampling has become (almost) deterministic, so the group baselines see no spread
and exploration stops.

Reads `entropy`, the mean per-token entropy of the policy over completion tokens (train/rl_step.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marginkit.diagnostics.checks.window import ACTION_HELP, Action, Finding, Window, trailing_run

__all__ = ["EntropyCollapseConfig", "entropy_collapse"]


@dataclass
class EntropyCollapseConfig:
    enabled: bool = field(default=True, metadata={"help": "RL: check for the mean token entropy collapsing."})
    min_entropy: float = field(default=0.05, metadata={"help": "Mean token entropy (nats) counted as collapsed."})
    min_fraction: float = field(default=0.1, metadata={"help": "Also collapsed: entropy below this fraction of its "
                                                       "step-1 value (when this run observed step 1)."})
    patience: int = field(default=5, metadata={"help": "Consecutive collapsed steps before the alert."})
    action: Action = field(default="warn", metadata={"help": ACTION_HELP})


def entropy_collapse(window: Window, cfg: EntropyCollapseConfig) -> Finding | None:
    """Fires when the last `patience` rows that log `entropy` (the current one included) all have entropy
    below `min_entropy` ("floor") or below `min_fraction` x step 1's entropy (`window.first`, when known;
    "fraction"). Rows without `entropy` neither count nor break the run.
    """
    if "entropy" not in window.now.metrics:
        return None
    first = window.first.get("entropy")
    limit = cfg.min_entropy if first is None else max(cfg.min_entropy, cfg.min_fraction * first)
    n = trailing_run(window.having("entropy"), lambda r: r.metrics["entropy"] < limit)
    if n < cfg.patience:
        return None
    entropy = window.now.metrics["entropy"]
    values = {"entropy": entropy, "steps": float(n)}
    if first is not None:
        values["entropy@1"] = first
    floor = first is None or cfg.min_entropy >= cfg.min_fraction * first
    return Finding(values, {"min_entropy": cfg.min_entropy, "fraction": entropy / first if first else 0.0},
                   variant="floor" if floor else "fraction")
