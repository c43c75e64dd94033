"""Diagnostics: checks on training inputs and signals (pre-flight reward-token check, loss-mask audit,
the margin monitor)."""

from marginkit.diagnostics.mask_audit import AuditReport, MaskAuditError, audit_loss_mask, probe_loss_mask
from marginkit.diagnostics.monitor import Alert, MarginMonitor, MonitorConfig, MonitorStopError
from marginkit.diagnostics.preflight import PreflightError, RewardTokenReport, check_reward_tokens

__all__ = ["Alert", "AuditReport", "MarginMonitor", "MaskAuditError", "MonitorConfig", "MonitorStopError",
           "PreflightError", "RewardTokenReport", "audit_loss_mask", "check_reward_tokens", "probe_loss_mask"]
