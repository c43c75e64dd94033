"""The margin monitor's checks: one pure function per file, `(Window, config) -> Finding | None`, named as
its file (`checks.stuck.stuck`), plus the metric window they read (window.py) and the message table
(messages.py). diagnostics/monitor.py runs them. The package re-exports nothing, so that each name below is
its module."""

__all__ = ["chosen_logps", "entropy_collapse", "explosion", "first_step", "kl_blowup", "length_collapse", "margin_gap",
           "messages", "reward_hacking", "reward_scale", "slow_start", "stuck", "window"]
