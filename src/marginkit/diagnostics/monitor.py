"""The margin monitor: checks on every optimiser step's metrics that catch broken setups, stuck runs and
reward hacking while a run is still cheap to stop (issue 5; the explosion signature is seed 001's).

The engine calls `MarginMonitor.observe(step, metrics)` after each optimiser step with that step's
metrics, reduced over every micro-batch and process (the same per-pair means `metrics.jsonl` logs, names
as in docs/metrics.md). The monitor keeps a window of recent rows, runs each check on it, and turns what
the checks find into `Alert`s with the message table; the engine prints them, appends them to
`alerts.jsonl` and, for action "stop", ends the run. Each check is a pure function of the window and its
config, one per file in diagnostics/checks/ (docs/monitor.md):

    first_step     step 1's loss equals its expected initial value (ln 2 for DPO with policy = reference
                   and for BT with a zero head; mean softplus(m) with margins m; per loss for IPO/hinge)
    stuck          loss at its initial value (or ln 2) with a near-zero gradient norm for k steps
    slow_start     loss still at its initial value (or ln 2) and the reward gap still ~0 after many steps
                   although gradients flow (a zero-initialised head with a small learning rate)
    explosion      the raw log-ratio gap (DPO) or reward gap (RM) beyond a healthy range, or growing fast,
                   while loss -> 0 and accuracy -> 1 (seed 001: 56.9, 240.7, 599.2 at steps 30, 70, 150)
    chosen_logps   log π(y_c|x) falling steadily while the gap grows (likelihood displacement)
    reward_scale   RMs: |rewards| growing without bound (BT is blind to a shared offset; a padding bug sign)
    margin_gap     target margins far above the gaps the model produces (issue 4; "Secrets of RLHF II");
                   its warm-up and patience scale with the run's planned steps when known (issue 14)

The online RL trainers (train/rl.py) run another table, RL_CHECKS with RLMonitorConfig, once per rollout
step on that step's row (issue 16); each check is skipped while its metrics are not logged:

    kl_blowup         the per-token KL to the reference (kl) above a limit, or growing fast
    reward_hacking    the trained-on reward rising while gold/reward falls (least-squares slopes)
    entropy_collapse  the mean token entropy near 0, or far below its step-1 value
    length_collapse   completions all of one length, or all cut at max_new_tokens

All thresholds are heuristics with documented defaults (docs/monitor.md); every check can be switched
off or made to stop the run. The monitor's state (the window, the first loss, the cooldowns) round-trips
through `state_dict()` so a resumed run alerts exactly as the uninterrupted one would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from marginkit.diagnostics.checks.chosen_logps import ChosenLogpsConfig, chosen_logps
from marginkit.diagnostics.checks.entropy_collapse import EntropyCollapseConfig, entropy_collapse
from marginkit.diagnostics.checks.explosion import ExplosionConfig, explosion
from marginkit.diagnostics.checks.first_step import FirstStepConfig, first_step
from marginkit.diagnostics.checks.kl_blowup import KLBlowupConfig, kl_blowup
from marginkit.diagnostics.checks.length_collapse import LengthCollapseConfig, length_collapse
from marginkit.diagnostics.checks.margin_gap import MarginGapConfig, margin_gap
from marginkit.diagnostics.checks.messages import render
from marginkit.diagnostics.checks.reward_hacking import RewardHackingConfig, reward_hacking
from marginkit.diagnostics.checks.reward_scale import RewardScaleConfig, reward_scale
from marginkit.diagnostics.checks.slow_start import SlowStartConfig, slow_start
from marginkit.diagnostics.checks.stuck import StuckConfig, stuck
from marginkit.diagnostics.checks.window import LN2, Finding, Row, Window

__all__ = ["Alert", "MarginMonitor", "MonitorConfig", "MonitorStopError", "FirstStepConfig", "StuckConfig", "SlowStartConfig",
           "ExplosionConfig", "ChosenLogpsConfig", "RewardScaleConfig", "MarginGapConfig", "LN2", "CHECKS",
           "window_rows", "RLMonitorConfig", "RL_CHECKS", "KLBlowupConfig", "RewardHackingConfig",
           "EntropyCollapseConfig", "LengthCollapseConfig"]


@dataclass
class MonitorConfig:
    """The margin monitor's checks (docs/monitor.md): each can be switched off or set to stop the run."""

    enabled: bool = field(default=True, metadata={"help": "Run the margin monitor after every optimizer step "
                                                  "(costs one small all-reduce per step)."})
    repeat_every: int = field(default=100, metadata={"help": "A check that alerted stays quiet this many steps "
                                                     "(0: alert once per run)."})
    first_step: FirstStepConfig = field(default_factory=FirstStepConfig)
    stuck: StuckConfig = field(default_factory=StuckConfig)
    slow_start: SlowStartConfig = field(default_factory=SlowStartConfig)
    explosion: ExplosionConfig = field(default_factory=ExplosionConfig)
    chosen_logps: ChosenLogpsConfig = field(default_factory=ChosenLogpsConfig)
    reward_scale: RewardScaleConfig = field(default_factory=RewardScaleConfig)
    margin_gap: MarginGapConfig = field(default_factory=MarginGapConfig)

    def __post_init__(self) -> None:
        if self.repeat_every < 0:
            raise ValueError(f"monitor.repeat_every={self.repeat_every}: must be >= 0")
        windows = {"stuck.steps": self.stuck.steps, "slow_start.steps": self.slow_start.steps,
                   "explosion.growth_window": self.explosion.growth_window,
                   "chosen_logps.window": self.chosen_logps.window, "reward_scale.window": self.reward_scale.window}
        for key, value in windows.items():
            if value < 2:
                raise ValueError(f"monitor.{key}={value}: must be >= 2")
        if self.margin_gap.patience < 1 or self.margin_gap.min_patience < 1:
            raise ValueError(f"monitor.margin_gap.patience={self.margin_gap.patience}, min_patience="
                             f"{self.margin_gap.min_patience}: both must be >= 1")
        for key in ("patience_fraction", "warmup_fraction"):
            if not 0 <= getattr(self.margin_gap, key) <= 1:
                raise ValueError(f"monitor.margin_gap.{key}={getattr(self.margin_gap, key)}: must be in [0, 1]")
        if not self.explosion.gap_metrics:
            raise ValueError("monitor.explosion.gap_metrics is empty: name at least one gap metric")
        if self.explosion.growth_factor <= 1 or self.reward_scale.growth_factor <= 1:
            raise ValueError("monitor.explosion.growth_factor and monitor.reward_scale.growth_factor must be > 1")


@dataclass
class RLMonitorConfig:
    """The margin monitor's online-RL checks (docs/monitor.md), run once per rollout step: each can be switched
    off or set to stop the run; each is skipped while the metrics it reads are not logged."""

    enabled: bool = field(default=True, metadata={"help": "Run the monitor's RL checks after every rollout step."})
    repeat_every: int = field(default=100, metadata={"help": "A check that alerted stays quiet this many rollout "
                                                     "steps (0: alert once per run)."})
    kl_blowup: KLBlowupConfig = field(default_factory=KLBlowupConfig)
    reward_hacking: RewardHackingConfig = field(default_factory=RewardHackingConfig)
    entropy_collapse: EntropyCollapseConfig = field(default_factory=EntropyCollapseConfig)
    length_collapse: LengthCollapseConfig = field(default_factory=LengthCollapseConfig)

    def __post_init__(self) -> None:
        if self.repeat_every < 0:
            raise ValueError(f"monitor.repeat_every={self.repeat_every}: must be >= 0")
        for key, value in {"kl_blowup.window": self.kl_blowup.window,
                           "reward_hacking.window": self.reward_hacking.window}.items():
            if value < 2:
                raise ValueError(f"monitor.{key}={value}: must be >= 2")
        for key, value in {"kl_blowup.patience": self.kl_blowup.patience,
                           "entropy_collapse.patience": self.entropy_collapse.patience,
                           "length_collapse.patience": self.length_collapse.patience}.items():
            if value < 1:
                raise ValueError(f"monitor.{key}={value}: must be >= 1")
        if self.kl_blowup.growth_factor <= 1:
            raise ValueError(f"monitor.kl_blowup.growth_factor={self.kl_blowup.growth_factor}: must be > 1")


@dataclass(frozen=True)
class Check:
    """A check as the monitor runs it: `run` calls the pure check with its part of the config (and, for the
    two checks that share a setting with another, that setting, named here and nowhere else); `rows` is how
    many rows of the window it reads at most."""

    run: Callable[[Window, MonitorConfig], Finding | None]
    rows: Callable[[MonitorConfig], int]


# In the order their alerts of one step are listed. Names are the config fields and the alerts' `check`.
CHECKS: Mapping[str, Check] = MappingProxyType({
    "first_step": Check(lambda w, c: first_step(w, c.first_step), lambda c: 1),
    "stuck": Check(lambda w, c: stuck(w, c.stuck), lambda c: c.stuck.steps),
    "slow_start": Check(lambda w, c: slow_start(w, c.slow_start, zero_grad_norm=c.stuck.max_grad_norm),
                        lambda c: c.slow_start.steps),
    "explosion": Check(lambda w, c: explosion(w, c.explosion), lambda c: c.explosion.growth_window + 1),
    "chosen_logps": Check(lambda w, c: chosen_logps(w, c.chosen_logps, gap_metrics=c.explosion.gap_metrics),
                          lambda c: c.chosen_logps.window),
    "reward_scale": Check(lambda w, c: reward_scale(w, c.reward_scale), lambda c: c.reward_scale.window + 1),
    "margin_gap": Check(lambda w, c: margin_gap(w, c.margin_gap), lambda c: c.margin_gap.patience),
})


# The online RL trainers' table (RLMonitorConfig); one row per rollout step.
RL_CHECKS: Mapping[str, Check] = MappingProxyType({
    "kl_blowup": Check(lambda w, c: kl_blowup(w, c.kl_blowup),
                       lambda c: max(c.kl_blowup.window + 1, c.kl_blowup.patience)),
    "reward_hacking": Check(lambda w, c: reward_hacking(w, c.reward_hacking), lambda c: c.reward_hacking.window),
    "entropy_collapse": Check(lambda w, c: entropy_collapse(w, c.entropy_collapse), lambda c: c.entropy_collapse.patience),
    "length_collapse": Check(lambda w, c: length_collapse(w, c.length_collapse), lambda c: c.length_collapse.patience),
})


def checks_for(cfg: MonitorConfig | RLMonitorConfig) -> Mapping[str, Check]:
    """The table a config runs: RL_CHECKS for RLMonitorConfig, else CHECKS."""
    return RL_CHECKS if isinstance(cfg, RLMonitorConfig) else CHECKS


def window_rows(cfg: MonitorConfig | RLMonitorConfig) -> int:
    """Rows the monitor keeps: the most any check reads, plus `repeat_every`, so that a check that counts
    steps in a row (stuck, slow_start, margin_gap) reports the same count at its first repeat as a running
    counter would (later repeats of an unbroken run report at most this many steps)."""
    return max(check.rows(cfg) for check in checks_for(cfg).values()) + cfg.repeat_every


@dataclass(frozen=True)
class Alert:
    """One finding: the step, the check's name, "warn" or "stop", a message naming causes and fixes, and
    the numbers it was based on. `to_dict()` is the `alerts.jsonl` line."""

    step: int
    check: str
    severity: Literal["warn", "stop"]
    message: str
    values: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[monitor {self.severity.upper()} step {self.step}, {self.check}] {self.message}"


class MonitorStopError(RuntimeError):
    """A check whose action is "stop" fired; the run ended without a checkpoint. `.alert` is the finding."""

    def __init__(self, alert: Alert, where: str = "alerts.jsonl"):
        self.alert = alert
        super().__init__(
            f"training stopped by the margin monitor at step {alert.step} (check {alert.check!r}, written to "
            f"{where}; no checkpoint saved for this step): {alert.message} To only warn, set "
            f"train.monitor.{alert.check}.action=warn; to skip the check, train.monitor.{alert.check}.enabled=false.")


class MarginMonitor:
    """The window of recent metric rows, the checks run on it, and the warn/stop and cooldown policy.

    Args:
        cfg: which checks run, their thresholds and actions.
        expected_initial_loss: what the trainer knows the step-1 loss must be: a number (ln 2 for sigmoid
            DPO with policy = reference), the name of a metric the first step logs that holds it (an RM with
            a zero head: "diagnostics/loss_at_zero_gap", the mean softplus(m) of its margins), or None (the
            first-step check is skipped unless `cfg.first_step.expected` is set, which wins when set).
        total_steps: the run's planned optimizer steps (None: unknown). margin_gap scales its warm-up and
            patience to it, so a short run can alert too (issue 14: a 126-step run never could).

    `observe(step, metrics)` takes the step number (1 for the first optimiser step) and the step's reduced
    metrics (loss, grad_norm, rewards/*, logps/*, logratios/*, target_margins/*, diagnostics/*: any subset;
    a check whose inputs are missing is skipped) and returns the alerts of that step.
    """

    def __init__(self, cfg: MonitorConfig | RLMonitorConfig | None = None,
                 expected_initial_loss: float | str | None = None, total_steps: int | None = None):
        self.cfg = cfg or MonitorConfig()
        self.expected_initial_loss = expected_initial_loss
        self.total_steps = total_steps  # the run's planned optimizer steps; the engine sets it when it knows
        self.checks = checks_for(self.cfg)
        self.rows: deque[Row] = deque(maxlen=window_rows(self.cfg))
        self.first_loss: float | None = None  # step 1's loss, when this run observed step 1
        self.first_row: dict[str, float] = {}  # step 1's metrics, when this run observed step 1
        self.last_alert: dict[str, int] = {}  # check -> step of its last alert (for repeat_every)

    @property
    def checks_first_step(self) -> bool:
        """Whether the first-step check has an expected value to compare with."""
        return "first_step" in self.checks and self.cfg.first_step.enabled and self._expected() is not None

    def _expected(self) -> float | str | None:
        first = getattr(self.cfg, "first_step", None)
        return first.expected if first is not None and first.expected is not None else self.expected_initial_loss

    def window(self) -> Window:
        """The rows kept so far (the latest last) and the run's start, as the checks read them."""
        return Window(tuple(self.rows), self.first_loss, self._expected(), self.total_steps, dict(self.first_row))

    def observe(self, step: int, metrics: dict[str, float]) -> list[Alert]:
        if not self.cfg.enabled:
            return []
        self.rows.append(Row(step, dict(metrics)))
        if step == 1 and "loss" in metrics and self.first_loss is None:
            self.first_loss = metrics["loss"]
        if step == 1 and not self.first_row:
            self.first_row = dict(metrics)
        window, alerts = self.window(), []
        for name, check in self.checks.items():
            check_cfg = getattr(self.cfg, name)
            if not check_cfg.enabled:
                continue
            finding = check.run(window, self.cfg)
            if finding is None or self._cooling(name, step):
                continue
            self.last_alert[name] = step
            alerts.append(Alert(step, name, check_cfg.action, render(name, finding),
                                {k: float(v) for k, v in finding.values.items()}))
        return alerts

    def _cooling(self, name: str, step: int) -> bool:
        last = self.last_alert.get(name)
        if last is None:
            return False
        return self.cfg.repeat_every == 0 or step - last < self.cfg.repeat_every

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [[row.step, dict(row.metrics)] for row in self.rows], "first_loss": self.first_loss,
                "first_row": dict(self.first_row),
                "checks": {name: {"last_alert": self.last_alert.get(name)} for name in self.checks}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checks = state.get("checks", {})
        if "rows" not in state:
            # Written by the stateful checks of earlier versions: keep the cooldowns and the first loss; the
            # windows and counters they kept cannot be turned back into rows, so those restart.
            self.last_alert = dict(state.get("last_alert", {}))
            self.first_loss = checks.get("first_step", {}).get("first_loss")
            self.rows.clear()
            return
        self.rows = deque((Row(int(step), dict(m)) for step, m in state["rows"]), maxlen=window_rows(self.cfg))
        self.first_loss = state["first_loss"]
        self.first_row = dict(state.get("first_row") or {})  # absent in states written before the RL checks
        # a check missing from the state (added after the checkpoint was written) starts without a cooldown
        self.last_alert = {name: c["last_alert"] for name, c in checks.items() if c.get("last_alert") is not None}
