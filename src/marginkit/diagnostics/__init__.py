"""Diagnostics: checks on training inputs and signals (pre-flight reward-token check)."""

from marginkit.diagnostics.preflight import PreflightError, RewardTokenReport, check_reward_tokens

__all__ = ["PreflightError", "RewardTokenReport", "check_reward_tokens"]
