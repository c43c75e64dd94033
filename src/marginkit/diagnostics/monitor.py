"""The margin monitor: checks on every optimiser step's metrics that catch broken setups, stuck runs and
reward hacking while a run is still cheap to stop (issue 5; the explosion signature is seed 001's).

The engine calls `MarginMonitor.observe(step, metrics)` after each optimiser step with that step's
metrics, reduced over every micro-batch and process (the same per-pair means `metrics.jsonl` logs, names
as in docs/metrics.md). Each check keeps its own small state; the monitor returns `Alert`s and the engine
prints them, appends them to `alerts.jsonl` and, for action "stop", ends the run. The checks:

    first_step     step 1's loss equals its expected initial value (ln 2 for DPO with policy = reference
                   and for BT with a zero head; mean softplus(m) with margins m; per loss for IPO/hinge)
    stuck          loss at its initial value (or ln 2) with a near-zero gradient norm for k steps
    slow_start     loss still at its initial value (or ln 2) and the reward gap still ~0 after many steps
                   although gradients flow (a zero-initialised head with a small learning rate)
    explosion      the raw log-ratio gap (DPO) or reward gap (RM) beyond a healthy range, or growing fast,
                   while loss -> 0 and accuracy -> 1 (seed 001: 56.9, 240.7, 599.2 at steps 30, 70, 150)
    chosen_logps   log π(y_c|x) falling steadily while the gap grows (likelihood displacement)
    reward_scale   RMs: |rewards| growing without bound (BT is blind to a shared offset; a padding bug sign)
    margin_gap     target margins far above the gaps the model produces (issue 4; "Secrets of RLHF II")

All thresholds are heuristics with documented defaults (docs/monitor.md); every check can be switched
off or made to stop the run. The state (windows, counters, the first loss, cooldowns) round-trips
through `state_dict()` so a resumed run alerts exactly as the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Alert", "MarginMonitor", "MonitorConfig", "MonitorStopError", "FirstStepConfig", "StuckConfig", "SlowStartConfig",
           "ExplosionConfig", "ChosenLogpsConfig", "RewardScaleConfig", "MarginGapConfig", "LN2"]

LN2 = math.log(2.0)
Action = Literal["warn", "stop"]
_ACTION_HELP = "warn: print and record the alert; stop: also end the run (no checkpoint) with MonitorStopError."


@dataclass
class FirstStepConfig:
    enabled: bool = field(default=True, metadata={"help": "Check step 1's loss against its expected initial value."})
    expected: float | None = field(
        default=None, metadata={"help": "Expected step-1 loss; None: the trainer's own value (ln 2 for DPO with "
                                "policy = reference; the zero-gap loss of the margins for an RM with a zero head)."})
    tolerance: float = field(default=0.02, metadata={"help": "Allowed |loss - expected| / max(1, |expected|)."})
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


@dataclass
class StuckConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for a loss that stays at its initial value "
                                                  "with no gradient."})
    steps: int = field(default=10, metadata={"help": "Consecutive stuck steps before the alert."})
    loss_tolerance: float = field(default=0.005, metadata={"help": "|loss - initial| (or |loss - ln 2|) counted as 'at'."})
    max_grad_norm: float = field(default=1e-4, metadata={"help": "Gradient norm (before clipping) counted as zero."})
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


@dataclass
class SlowStartConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for a loss still at its initial value, and a reward "
                                                  "gap still ~0, after many steps although gradients flow."})
    steps: int = field(default=50, metadata={"help": "Consecutive such steps before the alert."})
    loss_tolerance: float = field(default=0.005, metadata={"help": "|loss - initial| (or |loss - ln 2|) counted as 'at'."})
    max_gap: float = field(default=0.01, metadata={"help": "|rewards/margins| (the mean reward gap) counted as ~0."})
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


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
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


@dataclass
class ChosenLogpsConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for chosen log-probs falling while the gap grows "
                                                  "(policy runs: needs logps/chosen)."})
    window: int = field(default=50, metadata={"help": "Steps the trend is fitted over."})
    min_drop: float = field(default=10.0, metadata={"help": "Fitted fall of logps/chosen over the window, in nats."})
    min_trend: float = field(default=0.8, metadata={"help": "Steady: |correlation| of the value with the step at "
                                                    "least this."})
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


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
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


@dataclass
class MarginGapConfig:
    enabled: bool = field(default=True, metadata={"help": "Check for target margins far larger than the gaps the "
                                                  "model produces (needs target_margins/*)."})
    ratio: float = field(default=5.0, metadata={"help": "Far larger: the mean margin over active pairs exceeds this "
                                                "many times max(rewards/margins, min_gap)."})
    min_gap: float = field(default=0.1, metadata={"help": "Floor of the gap in that ratio (gaps start at 0)."})
    min_exceeds: float = field(default=0.9, metadata={"help": "And m > gap on at least this fraction of active pairs."})
    patience: int = field(default=50, metadata={"help": "Consecutive such steps before the alert."})
    warmup_steps: int = field(default=100, metadata={"help": "Steps not counted at the start (gaps start at 0)."})
    action: Action = field(default="warn", metadata={"help": _ACTION_HELP})


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
        if self.margin_gap.patience < 1:
            raise ValueError(f"monitor.margin_gap.patience={self.margin_gap.patience}: must be >= 1")
        if not self.explosion.gap_metrics:
            raise ValueError("monitor.explosion.gap_metrics is empty: name at least one gap metric")
        if self.explosion.growth_factor <= 1 or self.reward_scale.growth_factor <= 1:
            raise ValueError("monitor.explosion.growth_factor and monitor.reward_scale.growth_factor must be > 1")


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


# ---- small pure helpers ----

def _trend(values: list[float]) -> tuple[float, float]:
    """(slope per step, Pearson correlation with the step index) of equally spaced values; corr 0 if flat."""
    n = len(values)
    xs = [i - (n - 1) / 2 for i in range(n)]
    mean = sum(values) / n
    sxx = sum(x * x for x in xs)
    sxy = sum(x * (v - mean) for x, v in zip(xs, values))
    syy = sum((v - mean) ** 2 for v in values)
    slope = sxy / sxx
    corr = sxy / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return slope, corr


def _first_present(metrics: dict[str, float], names: list[str]) -> str | None:
    return next((n for n in names if n in metrics), None)


Finding = tuple[str, dict[str, float]]  # (message, values)


# ---- the checks: each takes (step, metrics) and returns a Finding or None ----

class _FirstStep:
    def __init__(self, cfg: FirstStepConfig, expected: float | str | None):
        self.cfg, self.expected = cfg, expected
        self.seen = False
        self.first_loss: float | None = None  # also the stuck check's reference

    def expected_value(self, metrics: dict[str, float]) -> float | None:
        if self.cfg.expected is not None:
            return self.cfg.expected
        if isinstance(self.expected, str):
            return metrics.get(self.expected)
        return self.expected

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        if self.seen or "loss" not in m:
            return None
        self.seen = True
        if step != 1:  # started from a checkpoint: the initial loss is no longer observable
            return None
        self.first_loss = m["loss"]
        expected = self.expected_value(m)
        if expected is None or not self.cfg.enabled:
            return None
        if abs(m["loss"] - expected) <= self.cfg.tolerance * max(1.0, abs(expected)):
            return None
        return (
            f"first-step loss {m['loss']:.4f} differs from its expected initial value {expected:.4f}. Before any "
            "update the loss is fixed by the setup: ln 2 = 0.6931 for DPO with policy = reference and for BT with "
            "a zero reward head, softplus(m) averaged over pairs with margins m, the loss's own value for IPO or "
            "hinge. Likely causes: the reference model differs from the policy (another checkpoint, dtype, or "
            "dropout active in the policy but not the reference); the loss mask covers prompt or padding tokens "
            "or is not shifted by one (run the mask audit); the reward head is not zero-initialised or the reward "
            "is read at the wrong token (pre-flight check); a wrong beta or loss variant. Fix the setup before "
            "training further.", {"loss": m["loss"], "expected": expected})

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "first_loss": self.first_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.first_loss = state["seen"], state["first_loss"]


def _at_start(first: _FirstStep, m: dict[str, float], tolerance: float) -> list[str]:
    """Which starting values the loss is within `tolerance` of: ln 2, the first-step loss, the expected
    initial loss (names, for the message; empty when none)."""
    anchors = {"ln 2": LN2}
    if first.first_loss is not None:
        anchors["the first-step loss"] = first.first_loss
    expected = first.expected_value(m)
    if expected is not None:
        anchors["the expected initial loss"] = expected
    return [name for name, v in anchors.items() if abs(m["loss"] - v) <= tolerance]


class _Stuck:
    def __init__(self, cfg: StuckConfig, first: _FirstStep):
        self.cfg, self.first = cfg, first
        self.count = 0

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        if "loss" not in m or "grad_norm" not in m:
            return None
        at = _at_start(self.first, m, self.cfg.loss_tolerance)
        self.count = self.count + 1 if at and m["grad_norm"] <= self.cfg.max_grad_norm else 0
        if self.count < self.cfg.steps:
            return None
        return (
            f"training is stuck: for {self.count} steps the loss has stayed at {m['loss']:.4f} ({at[0]}) with "
            f"gradient norm {m['grad_norm']:.2e}, so nothing is learning. Likely causes: beta = 0 (DPO); the "
            "reference model is the trained model itself (shared weights keep every log-ratio at 0); frozen "
            "parameters (requires_grad False, or an optimizer built before unfreezing); gradients lost to a "
            ".detach() or torch.no_grad() around the forward; chosen and rejected identical, or an RM reward read "
            "at the same token for both (see the pre-flight check). Fix the cause; a higher learning rate will "
            "not help when the gradient is zero.", {"loss": m["loss"], "grad_norm": m["grad_norm"],
                                                    "steps": float(self.count)})

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class _SlowStart:
    """Loss at its start and mean reward gap ~0 for k steps while the gradient is *not* ~0 (that is `stuck`).
    Seen in this project: MiniLM RM, zero head, lr 2e-5: 56 steps at 0.6931, gap 1e-5, then chance accuracy."""

    def __init__(self, cfg: SlowStartConfig, first: _FirstStep, stuck: StuckConfig):
        self.cfg, self.first, self.stuck = cfg, first, stuck
        self.count = 0

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        if "loss" not in m or "grad_norm" not in m or "rewards/margins" not in m:
            return None
        at = _at_start(self.first, m, self.cfg.loss_tolerance)
        flat = abs(m["rewards/margins"]) <= self.cfg.max_gap and m["grad_norm"] > self.stuck.max_grad_norm
        self.count = self.count + 1 if at and flat else 0
        if self.count < self.cfg.steps:
            return None
        return (
            f"learning has not started: for {self.count} steps the loss has stayed at {m['loss']:.4f} and the mean "
            f"reward gap at {m['rewards/margins']:.1e}, although the gradient norm is {m['grad_norm']:.2e}. This is "
            "not a normal ln 2 plateau. The usual cause is a zero-initialised reward head (model.head_init=zero) "
            "with a small learning rate: Adam moves each head weight by about lr per step, and the backbone gets "
            "almost no gradient until the head has grown (a MiniLM RM at lr 2e-5 ended one epoch at chance). Use "
            "model.head_init=normal, a larger learning rate (or warm-up that reaches it), or more steps.",
            {"loss": m["loss"], "reward_gap": m["rewards/margins"], "grad_norm": m["grad_norm"],
             "steps": float(self.count)})

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class _Explosion:
    def __init__(self, cfg: ExplosionConfig):
        self.cfg = cfg
        self.gaps: deque[float] = deque(maxlen=cfg.growth_window + 1)

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        name = _first_present(m, self.cfg.gap_metrics)
        if name is None or "loss" not in m or "rewards/accuracies" not in m:
            return None
        gap = m[name]
        self.gaps.append(gap)
        saturated = m["loss"] <= self.cfg.max_loss and m["rewards/accuracies"] >= self.cfg.min_accuracy
        earlier = self.gaps[0] if len(self.gaps) == self.gaps.maxlen else None
        growing = earlier is not None and gap >= self.cfg.min_gap and (
            earlier <= 0 or gap >= self.cfg.growth_factor * earlier)
        if not saturated or not (gap > self.cfg.max_gap or growing):
            return None
        how = (f"beyond the healthy range (about 1-10; alert above {self.cfg.max_gap:g})" if gap > self.cfg.max_gap
               else f"{gap / earlier if earlier and earlier > 0 else math.inf:.1f}x its value "
                    f"{self.cfg.growth_window} steps ago")
        values = {name: gap, "loss": m["loss"], "rewards/accuracies": m["rewards/accuracies"]}
        if earlier is not None:
            values[f"{name}@-{self.cfg.growth_window}"] = earlier
        return (
            f"margin explosion: {name} = {gap:.1f} is {how} while loss = {m['loss']:.4f} and accuracy = "
            f"{m['rewards/accuracies']:.2f}. This looks like convergence but is reward hacking: the policy drives "
            "the rejected responses' probability towards 0 (or the RM pushes its scores apart) and memorises the "
            "pairs (seed 001: 56.9, 240.7, 599.2 at steps 30, 70, 150 with batch size 1). Fixes: larger batches "
            "(more pairs per optimizer step, or gradient accumulation), a larger beta, a bounded loss such as IPO, "
            "a lower learning rate; for an RM, reward centering and early stopping on eval accuracy.", values)

    def state_dict(self) -> dict[str, Any]:
        return {"gaps": list(self.gaps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gaps = deque(state["gaps"], maxlen=self.cfg.growth_window + 1)


class _ChosenLogps:
    def __init__(self, cfg: ChosenLogpsConfig, explosion: ExplosionConfig):
        self.cfg, self.gap_metrics = cfg, explosion.gap_metrics
        self.logps: deque[float] = deque(maxlen=cfg.window)
        self.gaps: deque[float] = deque(maxlen=cfg.window)

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        name = _first_present(m, self.gap_metrics)
        if "logps/chosen" not in m or name is None:
            return None
        self.logps.append(m["logps/chosen"])
        self.gaps.append(m[name])
        if len(self.logps) < self.cfg.window:
            return None
        slope, corr = _trend(list(self.logps))
        gap_slope, _ = _trend(list(self.gaps))
        drop = -slope * (self.cfg.window - 1)  # fitted fall over the window, nats
        if drop < self.cfg.min_drop or corr > -self.cfg.min_trend or gap_slope <= 0:
            return None
        rise = gap_slope * (self.cfg.window - 1)
        return (
            f"chosen log-probs are falling steadily: logps/chosen fell by {drop:.1f} nats over the last "
            f"{self.cfg.window} steps (correlation with the step {corr:.2f}) while {name} grew by {rise:.1f}. The "
            "margin is being won by pushing both responses down, the rejected one faster (likelihood "
            "displacement), so the policy is moving probability to responses outside the data. Fixes: add the NLL "
            "term on chosen responses, lower the learning rate, raise beta, use larger batches, or a conservative "
            "loss (IPO, label smoothing).", {"logps/chosen": m["logps/chosen"], "drop": drop, "correlation": corr,
                                             name: m[name]})

    def state_dict(self) -> dict[str, Any]:
        return {"logps": list(self.logps), "gaps": list(self.gaps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logps = deque(state["logps"], maxlen=self.cfg.window)
        self.gaps = deque(state["gaps"], maxlen=self.cfg.window)


class _RewardScale:
    def __init__(self, cfg: RewardScaleConfig):
        self.cfg = cfg
        self.scales: deque[float] = deque(maxlen=cfg.window + 1)

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        if "logps/chosen" in m or "rewards/chosen" not in m or "rewards/rejected" not in m:
            return None  # policy runs: implicit rewards are log-ratios, watched by explosion and chosen_logps
        scale = max(abs(m["rewards/chosen"]), abs(m["rewards/rejected"]))
        self.scales.append(scale)
        values = {"scale": scale, "rewards/chosen": m["rewards/chosen"], "rewards/rejected": m["rewards/rejected"]}
        if scale > self.cfg.max_abs:
            how = f"above {self.cfg.max_abs:g}"
        else:
            if len(self.scales) <= self.cfg.window or scale < self.cfg.min_abs:
                return None
            earlier = self.scales[0]
            _, corr = _trend(list(self.scales))
            if scale < self.cfg.growth_factor * earlier or corr < self.cfg.min_trend:
                return None
            how = f"{scale / earlier if earlier > 0 else math.inf:.1f}x its value {self.cfg.window} steps ago"
            values["scale@-window"] = earlier
        return (
            f"reward scale blow-up: the mean reward magnitude {scale:.1f} (chosen {m['rewards/chosen']:.1f}, "
            f"rejected {m['rewards/rejected']:.1f}) is {how}. BT only constrains reward differences, so nothing "
            "stops rewards drifting together; a steady drift often means the reward is read at a padding position "
            "and depends on length (a padding-side bug: check data.padding_side and the pre-flight report). Fixes: "
            "reward centering (loss.center_rewards_coefficient=0.01), a lower learning rate, and a check of "
            "where the reward token is.", values)

    def state_dict(self) -> dict[str, Any]:
        return {"scales": list(self.scales)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales = deque(state["scales"], maxlen=self.cfg.window + 1)


class _MarginGap:
    def __init__(self, cfg: MarginGapConfig):
        self.cfg = cfg
        self.count = 0

    def __call__(self, step: int, m: dict[str, float]) -> Finding | None:
        needed = ("target_margins/mean", "target_margins/active_fraction", "rewards/margins",
                  "diagnostics/margin_exceeds_gap")
        if any(k not in m for k in needed) or m["target_margins/active_fraction"] <= 0:
            self.count = 0
            return None
        active = m["target_margins/active_fraction"]
        margin = m["target_margins/mean"] / active  # mean m over active pairs (inactive pairs log m = 0)
        exceeds = m["diagnostics/margin_exceeds_gap"] / active  # fraction of active pairs with m > Δ
        gap = m["rewards/margins"]
        far = margin > self.cfg.ratio * max(gap, self.cfg.min_gap) and exceeds >= self.cfg.min_exceeds
        self.count = self.count + 1 if far and step > self.cfg.warmup_steps else 0
        if self.count < self.cfg.patience:
            return None
        return (
            f"target margins are far larger than the gaps the model produces: mean margin {margin:.2f} over "
            f"active pairs against a mean reward gap of {gap:.2f}, with m > gap on {exceeds:.0%} of active pairs, "
            f"for {self.count} steps. Margins the model cannot reach keep every pair in the high-loss regime and "
            "push reward scores apart without bound, which destabilises them (Wang et al. 2024, 'Secrets of RLHF "
            "Part II'). Fixes: lower the margin scale, clip the margins, warm them up, or filter which pairs get "
            "a margin (the confidence margin's below-batch-mean filter).",
            {"margin": margin, "rewards/margins": gap, "exceeds_fraction": exceeds, "steps": float(self.count)})

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class MarginMonitor:
    """Stateful checks over per-step metrics, for RM and DPO runs alike.

    Args:
        cfg: which checks run, their thresholds and actions.
        expected_initial_loss: what the trainer knows the step-1 loss must be: a number (ln 2 for sigmoid
            DPO with policy = reference), the name of a metric the first step logs that holds it (an RM with
            a zero head: "diagnostics/loss_at_zero_gap", the mean softplus(m) of its margins), or None (the
            first-step check is skipped unless `cfg.first_step.expected` is set).

    `observe(step, metrics)` takes the step number (1 for the first optimiser step) and the step's reduced
    metrics (loss, grad_norm, rewards/*, logps/*, logratios/*, target_margins/*, diagnostics/*: any subset;
    a check whose inputs are missing is skipped) and returns the alerts of that step.
    """

    def __init__(self, cfg: MonitorConfig | None = None, expected_initial_loss: float | str | None = None):
        self.cfg = cfg or MonitorConfig()
        first = _FirstStep(self.cfg.first_step, expected_initial_loss)
        self.checks: dict[str, Any] = {
            "first_step": first, "stuck": _Stuck(self.cfg.stuck, first),
            "slow_start": _SlowStart(self.cfg.slow_start, first, self.cfg.stuck), "explosion": _Explosion(self.cfg.explosion),
            "chosen_logps": _ChosenLogps(self.cfg.chosen_logps, self.cfg.explosion),
            "reward_scale": _RewardScale(self.cfg.reward_scale), "margin_gap": _MarginGap(self.cfg.margin_gap),
        }
        self.last_alert: dict[str, int] = {}  # check -> step of its last alert (for repeat_every)

    @property
    def checks_first_step(self) -> bool:
        """Whether the first-step check has an expected value to compare with."""
        return self.cfg.first_step.enabled and (
            self.cfg.first_step.expected is not None or self.checks["first_step"].expected is not None)

    def observe(self, step: int, metrics: dict[str, float]) -> list[Alert]:
        if not self.cfg.enabled:
            return []
        alerts = []
        for name, check in self.checks.items():
            # The first-step check always runs: it records the first loss the stuck check compares with.
            check_cfg = getattr(self.cfg, name)
            if not check_cfg.enabled and name != "first_step":
                continue
            finding = check(step, metrics)
            if finding is None or self._cooling(name, step):
                continue
            self.last_alert[name] = step
            message, values = finding
            alerts.append(Alert(step, name, check_cfg.action, message, {k: float(v) for k, v in values.items()}))
        return alerts

    def _cooling(self, name: str, step: int) -> bool:
        last = self.last_alert.get(name)
        if last is None:
            return False
        return self.cfg.repeat_every == 0 or step - last < self.cfg.repeat_every

    def state_dict(self) -> dict[str, Any]:
        return {"last_alert": dict(self.last_alert), "checks": {k: c.state_dict() for k, c in self.checks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_alert = dict(state["last_alert"])
        for name, check in self.checks.items():
            if name in state["checks"]:  # a check added after the checkpoint was written starts fresh
                check.load_state_dict(state["checks"][name])
