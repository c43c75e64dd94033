"""`marginkit world rl-compare`: DPO, Best-of-N and online RL with BT and margin RMs on the gold world
(runner.py runs it, report.py turns its rows into tables and plots; docs/rl_compare.md)."""

from marginkit.study.rl_compare.runner import (
    COMPARE_SIZES,
    RLCompareConfig,
    load_rows,
    run_rl_compare,
    run_seed,
)

__all__ = ["COMPARE_SIZES", "RLCompareConfig", "load_rows", "run_rl_compare", "run_seed"]
