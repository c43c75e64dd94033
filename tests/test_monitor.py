"""The margin monitor: fires on seed 001's explosion trace and on stuck runs, stays silent on healthy runs
(synthetic traces and a real tiny RM run through the engine), checks the first-step loss, stops a run
when told to, and resumes exactly from its state."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from _engine_helpers import make_pairs, one_torch_thread, run_config, train, vocab_words
from conftest import resolve_dotted
from marginkit.configlib import ConfigError, load_config
from marginkit.data.schema import Pair
from marginkit.diagnostics.checks.chosen_logps import ChosenLogpsConfig, chosen_logps
from marginkit.diagnostics.checks.explosion import ExplosionConfig, explosion
from marginkit.diagnostics.checks.first_step import FirstStepConfig, first_step
from marginkit.diagnostics.checks.margin_gap import MarginGapConfig, margin_gap
from marginkit.diagnostics.checks.messages import MESSAGES, render
from marginkit.diagnostics.checks.reward_scale import RewardScaleConfig, reward_scale
from marginkit.diagnostics.checks.slow_start import SlowStartConfig, slow_start
from marginkit.diagnostics.checks.stuck import StuckConfig, stuck
from marginkit.diagnostics.checks.window import Row, Window, trend
from marginkit.diagnostics.monitor import LN2, MarginMonitor, MonitorConfig, MonitorStopError, RLMonitorConfig
from marginkit.margins import MarginSpec


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def run(monitor: MarginMonitor, trace: list[dict[str, float]], start: int = 1) -> list:
    alerts = []
    for step, metrics in enumerate(trace, start=start):
        alerts += monitor.observe(step, metrics)
    return alerts


# ---- traces ----

BETA = 0.1  # seed 001's beta before tuning


def interpolate(points: dict[int, float], step: int) -> float:
    """Piecewise-linear through `points` (step -> value), constant before the first."""
    keys = sorted(points)
    if step <= keys[0]:
        return points[keys[0]]
    for a, b in zip(keys, keys[1:]):
        if step <= b:
            return points[a] + (points[b] - points[a]) * (step - a) / (b - a)
    return points[keys[-1]]


def seed001_trace() -> list[dict[str, float]]:
    """Seed 001, batch size 1: raw log-ratio gap 0 at step 20 (loss 0.693, accuracy 0), then 56.9, 240.7 and
    599.2 at steps 30, 70 and 150; in between, linear. Loss is sigmoid DPO's softplus(-beta gap) and the
    accuracy of one pair is 1 once its gap is positive; the gradient stays healthy and logps/chosen flat."""
    gaps = {20: 0.0, 30: 56.9, 70: 240.7, 150: 599.2}
    trace = []
    for step in range(1, 151):
        gap = interpolate(gaps, step)
        trace.append({"loss": softplus(-BETA * gap), "rewards/accuracies": float(gap > 0),
                      "rewards/margins": BETA * gap, "logratios/gap_raw": gap, "grad_norm": 1.5,
                      "logps/chosen": -40.0, "logps/rejected": -40.0 - gap})
    return trace


def healthy_dpo_trace(n: int = 400) -> list[dict[str, float]]:
    """A sane DPO run: the raw gap saturates near 6, loss falls from ln 2 to about 0.45, accuracy rises to
    0.7, chosen log-probs drift down by 2 nats over the run with a little wobble, grad norm about 1."""
    trace = []
    for t in range(n):
        gap = 6 * (1 - math.exp(-t / 100))
        trace.append({"loss": softplus(-BETA * gap), "rewards/accuracies": 0.5 * (t > 0) + 0.2 * (1 - math.exp(-t / 50)),
                      "rewards/margins": BETA * gap, "logratios/gap_raw": gap, "grad_norm": 1.0 + 0.2 * math.sin(t),
                      "rewards/chosen": BETA * gap / 2, "rewards/rejected": -BETA * gap / 2,
                      "logps/chosen": -60 - 2 * t / n + 0.3 * math.sin(t), "logps/rejected": -60 - 2 * t / n - gap})
    return trace


def healthy_rm_trace(n: int = 400) -> list[dict[str, float]]:
    """A sane RM with a fixed margin 1: the gap grows to 2, loss falls from softplus(1), rewards stay O(1)."""
    trace = []
    for t in range(n):
        gap = 2 * (1 - math.exp(-t / 80))
        trace.append({"loss": softplus(1 - gap), "rewards/accuracies": 0.5 * (t > 0) + 0.3 * (1 - math.exp(-t / 80)),
                      "rewards/margins": gap, "rewards/chosen": 0.5 + gap / 2, "rewards/rejected": 0.5 - gap / 2,
                      "grad_norm": 0.8, "target_margins/mean": 1.0, "target_margins/active_fraction": 1.0,
                      "diagnostics/margin_exceeds_gap": 1.0 if gap < 1 else 0.3,
                      "diagnostics/loss_at_zero_gap": softplus(1.0)})
    return trace


# ---- the trend helper ----

def test_trend_by_hand():
    # values 1, 3, 5 at centred steps -1, 0, 1: sxy = (-1)(1-3) + 0 + (1)(5-3) = 4, sxx = 2 -> slope 2;
    # syy = 4 + 0 + 4 = 8 -> corr = 4 / sqrt(2 * 8) = 1.
    assert trend([1.0, 3.0, 5.0]) == (2.0, 1.0)
    # 2, 0, 2: sxy = (-1)(2 - 4/3) + (1)(2 - 4/3) = 0 -> slope 0, corr 0
    assert trend([2.0, 0.0, 2.0]) == (0.0, 0.0)
    assert trend([3.0, 3.0, 3.0]) == (0.0, 0.0)  # flat: no correlation rather than 0/0


# ---- explosion: seed 001 ----

def test_fires_on_the_seed_001_explosion():
    trace = seed001_trace()
    # The trace passes through the seed's numbers.
    assert [round(trace[s - 1]["logratios/gap_raw"], 1) for s in (20, 30, 70, 150)] == [0.0, 56.9, 240.7, 599.2]
    assert trace[19]["loss"] == pytest.approx(0.693, abs=5e-4) and trace[19]["rewards/accuracies"] == 0.0
    assert trace[29]["loss"] < 0.005 and trace[29]["rewards/accuracies"] == 1.0

    alerts = run(MarginMonitor(MonitorConfig(), expected_initial_loss=LN2), trace)
    # The gap passes max_gap = 20 at step 24 (56.9 * 4/10 = 22.8) but the run is saturated (loss <= 0.05)
    # only from step 26: loss(24) = softplus(-2.28) = 0.098, loss(25) = softplus(-2.85) = 0.057,
    # loss(26) = softplus(-3.41) = 0.032. repeat_every = 100, so the next alert is at step 126.
    assert [(a.step, a.check) for a in alerts] == [(26, "explosion"), (126, "explosion")]
    first = alerts[0]
    assert first.severity == "warn"
    assert first.values["logratios/gap_raw"] == pytest.approx(56.9 * 6 / 10)
    for fix in ("larger batches", "larger beta", "IPO", "lower learning rate"):
        assert fix in first.message
    json.dumps([a.to_dict() for a in alerts])  # what alerts.jsonl holds


def test_explosion_by_growth_below_max_gap():
    # The gap triples within growth_window = 20 steps but stays under max_gap = 20: 5 -> 15 over steps
    # 1..21 with a saturated run. At step 21 the deque holds steps 1..21: 15 >= 3 * 5 and 15 >= min_gap 10.
    trace = [{"loss": 0.01, "rewards/accuracies": 1.0, "rewards/margins": 5 + 0.5 * t} for t in range(30)]
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), trace)
    assert [(a.step, a.check) for a in alerts] == [(21, "explosion")]
    assert "3.0x its value 20 steps ago" in alerts[0].message


def test_large_gap_without_saturation_is_not_an_explosion():
    # An RM gap of 30 with loss 0.3: some pairs are still wrong, so this is not the seed-001 signature.
    trace = [{"loss": 0.3, "rewards/accuracies": 0.9, "rewards/margins": 30.0}] * 50
    assert run(MarginMonitor(), trace) == []


# ---- stuck ----

def test_fires_on_a_stuck_run():
    # beta = 0: loss ln 2 and a zero gradient at every step; steps = 10 consecutive -> alert at step 10.
    trace = [{"loss": LN2, "grad_norm": 0.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0}] * 30
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), trace)
    assert [(a.step, a.check) for a in alerts] == [(10, "stuck")]
    assert "beta = 0" in alerts[0].message and "frozen" in alerts[0].message


def test_stuck_at_the_first_loss_and_the_count_resets():
    # Stuck at the step-1 loss (a margin run: softplus(1) = 1.3133), not at ln 2. One healthy step (grad 0.5)
    # in the middle resets the count: steps 1-5 stuck, 6 not, 7-16 stuck -> the 10th in a row is step 16.
    grads = [0.0] * 5 + [0.5] + [0.0] * 12
    trace = [{"loss": softplus(1.0), "grad_norm": g} for g in grads]
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), trace)
    assert [(a.step, a.check) for a in alerts] == [(16, "stuck")]
    assert "the first-step loss" in alerts[0].message


def test_a_learning_run_at_ln2_is_not_stuck():
    trace = [{"loss": LN2, "grad_norm": 0.3}] * 30  # gradient flows: early training, not stuck
    assert run(MarginMonitor(), trace) == []


# ---- slow start ----

def zero_head_trace(n: int = 60) -> list[dict[str, float]]:
    """This project's MiniLM RM at lr 2e-5 with a zero head (metrics.jsonl of that run, steps 10-50: loss
    0.69315-0.69314, gap 4e-7 to 1e-5, grad norm 0.11): learning never visibly started in 56 steps."""
    return [{"loss": LN2 - 3e-6, "grad_norm": 0.11, "rewards/margins": 1e-5, "rewards/accuracies": 0.5}] * n


def test_slow_start_fires_on_the_zero_head_trace():
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), zero_head_trace())
    assert [(a.step, a.check) for a in alerts] == [(50, "slow_start")]  # steps = 50 in a row; not "stuck"
    assert "head_init=normal" in alerts[0].message and alerts[0].values["steps"] == 50


def test_slow_start_silent_once_the_gap_moves():
    trace = zero_head_trace(30) + [{"loss": LN2 - 0.01, "grad_norm": 0.2, "rewards/margins": 0.05}] * 40
    assert run(MarginMonitor(MonitorConfig(repeat_every=0)), trace) == []
    # the loss still within 0.005 of ln 2 but the mean gap already 0.05 (> max_gap 0.01): it has started
    trace = zero_head_trace(30) + [{"loss": LN2 - 0.002, "grad_norm": 0.2, "rewards/margins": 0.05}] * 40
    assert run(MarginMonitor(MonitorConfig(repeat_every=0)), trace) == []


def test_slow_start_resumes_and_reads_old_checkpoints():
    whole = run(MarginMonitor(MonitorConfig(repeat_every=0)), zero_head_trace())
    first = MarginMonitor(MonitorConfig(repeat_every=0))
    run(first, zero_head_trace(30))
    state = first.state_dict()
    second = MarginMonitor(MonitorConfig(repeat_every=0))
    second.load_state_dict(state)
    later = [a for step, m in enumerate(zero_head_trace(30), start=31) for a in second.observe(step, m)]
    assert [(a.step, a.check) for a in later] == [(a.step, a.check) for a in whole]
    del state["checks"]["slow_start"]  # a checkpoint written before the check existed
    MarginMonitor().load_state_dict(state)


# ---- silent on healthy runs ----

@pytest.mark.parametrize("trace, expected", [(healthy_dpo_trace(), LN2),
                                             (healthy_rm_trace(), "diagnostics/loss_at_zero_gap")])
def test_silent_on_healthy_traces(trace, expected):
    assert trace[0]["loss"] == pytest.approx(LN2 if expected == LN2 else softplus(1.0))
    assert run(MarginMonitor(MonitorConfig(), expected_initial_loss=expected), trace) == []


def test_silent_on_a_real_tiny_rm_run(tiny_model_dir, word_tokenizer, tmp_path):
    """A short real run through the engine, with the first-step check on: a fixed margin 1 and a zero head
    give a step-1 loss of softplus(1 - 0) = ln(1 + e) = 1.3133 exactly."""
    pairs = make_pairs(vocab_words(word_tokenizer), 24)
    cfg = run_config(tiny_model_dir, tmp_path, head_init="zero", margin=MarginSpec(name="fixed"), batch_size=4,
                     num_epochs=2)
    cfg.train.monitor.first_step.expected = math.log1p(math.e)
    result = train(cfg, pairs)
    rows = [r for r in result.history if "loss" in r]
    assert len(rows) == 12 and rows[0]["loss"] == pytest.approx(math.log1p(math.e), abs=1e-6)
    assert all(r["monitor/alerts"] == 0 for r in rows)
    assert not (tmp_path / "alerts.jsonl").exists() or (tmp_path / "alerts.jsonl").read_text() == ""


def test_margin_gap_fires_in_a_short_engine_run(tiny_model_dir, word_tokenizer, tmp_path):
    """The engine tells the monitor the planned steps (issue 14). A fixed margin of 100 that no gap reaches,
    24 steps (24 pairs, batch 2, 2 epochs): warm-up int(0.25 x 24) = 6, patience max(10, int(0.4 x 24) = 9)
    = 10, so steps 7..16 are the 10 counted steps -> the alert at step 16 (never, with the fixed 100 + 50)."""
    from marginkit.margins.fixed import FixedMarginConfig

    cfg = run_config(tiny_model_dir, tmp_path, head_init="zero", batch_size=2, num_epochs=2,
                     margin=MarginSpec(name="fixed", fixed=FixedMarginConfig(value=100.0)))
    cfg.train.monitor.first_step.enabled = False
    train(cfg, make_pairs(vocab_words(word_tokenizer), 24))
    alerts = [json.loads(r) for r in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["check"]) for a in alerts if a["check"] == "margin_gap"] == [(16, "margin_gap")]


# ---- first step ----

def test_first_step_mismatch_fires():
    monitor = MarginMonitor(MonitorConfig(), expected_initial_loss=LN2)
    (alert,) = monitor.observe(1, {"loss": 0.75})  # |0.75 - 0.6931| = 0.057 > 0.02 * max(1, 0.69)
    assert alert.check == "first_step" and alert.values == {"loss": 0.75, "expected": LN2}
    assert "reference model differs from the policy" in alert.message and "mask" in alert.message
    assert monitor.observe(2, {"loss": 0.75}) == []  # only step 1 is checked


@pytest.mark.parametrize("loss, fires", [(0.70, False), (0.72, True)])
def test_first_step_tolerance(loss, fires):
    # tolerance 0.02 * max(1, ln 2) = 0.02: |0.70 - 0.6931| = 0.0069 passes, |0.72 - 0.6931| = 0.0269 fires
    assert bool(MarginMonitor(expected_initial_loss=LN2).observe(1, {"loss": loss})) is fires


def test_first_step_expected_from_a_metric_and_from_config():
    # An RM with a zero head and margins 0 and 2: expected = (softplus(0) + softplus(2)) / 2 = (0.6931 + 2.1269) / 2
    expected = (LN2 + softplus(2.0)) / 2
    m = {"loss": expected, "diagnostics/loss_at_zero_gap": expected}
    assert MarginMonitor(expected_initial_loss="diagnostics/loss_at_zero_gap").observe(1, m) == []
    assert MarginMonitor(expected_initial_loss="diagnostics/loss_at_zero_gap").observe(1, {**m, "loss": LN2})
    cfg = MonitorConfig()
    cfg.first_step.expected = 1.5  # the user's value wins over the trainer's
    assert MarginMonitor(cfg, expected_initial_loss=LN2).observe(1, {"loss": LN2})[0].values["expected"] == 1.5


def test_no_first_step_check_after_a_resume_or_without_expectation():
    assert MarginMonitor(expected_initial_loss=LN2).observe(7, {"loss": 3.0}) == []  # started at step 7
    monitor = MarginMonitor()
    assert not monitor.checks_first_step and monitor.observe(1, {"loss": 3.0}) == []


# ---- chosen log-probs, reward scale, margin vs gap ----

def test_chosen_logps_falling_while_the_gap_grows():
    # logps/chosen falls 0.5 nat per step, the gap grows 0.1 per step: at step 50 the window of 50 is full,
    # the fitted fall is 0.5 * 49 = 24.5 nats >= 10, correlation -1 -> alert at step 50.
    trace = [{"logps/chosen": -50 - 0.5 * t, "logratios/gap_raw": 0.1 * t} for t in range(60)]
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), trace)
    assert [(a.step, a.check) for a in alerts] == [(50, "chosen_logps")]
    assert alerts[0].values["drop"] == pytest.approx(24.5) and "NLL term" in alerts[0].message
    # The same fall with a shrinking gap is not the pattern (the margin is not being won).
    falling_both = [{"logps/chosen": -50 - 0.5 * t, "logratios/gap_raw": 5 - 0.1 * t} for t in range(60)]
    assert run(MarginMonitor(), falling_both) == []


def test_reward_scale_growing_without_bound():
    # chosen 0.2 t + 1, rejected 0.2 t (t = step): scale 0.2 t + 1. The window (100 steps + the current)
    # is full at step 101: scale 21.2 >= 4 x scale(1) = 4.8, >= min_abs 5, correlation 1 -> alert at 101.
    trace = [{"rewards/chosen": 0.2 * s + 1, "rewards/rejected": 0.2 * s} for s in range(1, 121)]
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), trace)
    assert [(a.step, a.check) for a in alerts] == [(101, "reward_scale")]
    assert alerts[0].values["scale"] == pytest.approx(21.2)
    assert "padding" in alerts[0].message and "center_rewards_coefficient" in alerts[0].message
    # Above max_abs = 100 at once; and never for a policy run (it logs logps/chosen).
    assert run(MarginMonitor(), [{"rewards/chosen": 150.0, "rewards/rejected": 140.0}])[0].check == "reward_scale"
    assert run(MarginMonitor(), [{"rewards/chosen": 150.0, "rewards/rejected": 140.0, "logps/chosen": -9.0}]) == []


def test_margins_far_larger_than_gaps():
    # Half the pairs active with m = 4 (target_margins/mean = 2 counts inactive pairs as 0), gap 0.3, and
    # m > gap on all active pairs (0.5 of all pairs / 0.5 active = 1). 4 > 5 * max(0.3, 0.1) = 1.5.
    # Counted after warmup_steps = 100, patience 50 -> the 50th counted step is step 150.
    far = {"target_margins/mean": 2.0, "target_margins/active_fraction": 0.5, "rewards/margins": 0.3,
           "diagnostics/margin_exceeds_gap": 0.5}
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0)), [far] * 200)
    assert [(a.step, a.check) for a in alerts] == [(150, "margin_gap")]
    assert alerts[0].values["margin"] == 4.0 and "Secrets of RLHF" in alerts[0].message
    # A gap of 1.0: 4 < 5 * 1.0 -> silent.
    assert run(MarginMonitor(), [{**far, "rewards/margins": 1.0}] * 200) == []


# ---- configuration, stop, state ----

def test_disabled_checks_and_monitor():
    trace = [{"loss": LN2, "grad_norm": 0.0}] * 30
    cfg = MonitorConfig()
    cfg.stuck.enabled = False
    assert run(MarginMonitor(cfg), trace) == []
    assert run(MarginMonitor(MonitorConfig(enabled=False)), seed001_trace()) == []


def test_config_from_overrides_and_bad_values():
    from marginkit.config import RMRunConfig

    cfg = load_config(RMRunConfig, None, ["train.monitor.explosion.action=stop", "train.monitor.stuck.steps=5",
                                          "train.monitor.explosion.gap_metrics=[logratios/gap_raw]"])
    assert cfg.train.monitor.explosion.action == "stop" and cfg.train.monitor.stuck.steps == 5
    with pytest.raises(ConfigError, match=r"explosion.action='halt': must be one of \['warn', 'stop'\]"):
        load_config(RMRunConfig, None, ["train.monitor.explosion.action=halt"])
    with pytest.raises(ConfigError, match=r"monitor.stuck.steps=1: must be >= 2"):
        load_config(RMRunConfig, None, ["train.monitor.stuck.steps=1"])


def test_state_round_trip_resumes_exactly():
    """Split the seed-001 trace (plus a chosen-logps fall) at step 60: a monitor restored from the state
    (through torch.save, as a checkpoint stores it) raises exactly the alerts of the uninterrupted one."""
    trace = seed001_trace()
    for t, m in enumerate(trace):
        m["logps/chosen"] = -40.0 - 0.5 * t  # the 50-step window spans the split
        m["grad_norm"] = 0.0 if 50 <= t < 65 else 1.5  # and so does a stuck count (loss 0: not stuck)
    cfg = MonitorConfig(repeat_every=30)
    full = run(MarginMonitor(cfg, expected_initial_loss=LN2), trace)

    first = MarginMonitor(cfg, expected_initial_loss=LN2)
    run(first, trace[:60])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = MarginMonitor(cfg, expected_initial_loss=LN2)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    tail = run(resumed, trace[60:], start=61)
    assert tail == [a for a in full if a.step > 60]
    assert {a.check for a in tail} == {"explosion", "chosen_logps"}
    # Without the state the windows and cooldowns restart, and the alerts differ.
    assert run(MarginMonitor(cfg, expected_initial_loss=LN2), trace[60:], start=61) != tail


def stuck_pairs(n: int) -> list[Pair]:
    """Pairs whose chosen and rejected are the same text: Δ = 0 exactly, so loss ln 2 and zero gradient."""
    return [Pair(f"please help {w}", "yes great", "yes great", id=str(i))
            for i, w in enumerate(["me", "a", "the", "cats", "dogs", "fish", "food", "water"][:n])]


def test_stop_action_ends_a_stuck_engine_run(tiny_model_dir, tmp_path):
    cfg = run_config(tiny_model_dir, tmp_path, head_init="normal", batch_size=2, num_epochs=3, save_every=1)
    cfg.preflight = "off"  # the pre-flight check would (rightly) refuse identical responses
    cfg.train.monitor.stuck.steps = 3
    cfg.train.monitor.stuck.action = "stop"
    with pytest.raises(MonitorStopError, match=r"stopped by the margin monitor at step 3 \(check 'stuck'") as e:
        train(cfg, stuck_pairs(8))
    assert e.value.alert.check == "stuck" and e.value.alert.severity == "stop"
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert set(record) == {"step", "check", "severity", "message", "values"}
    assert (record["step"], record["check"], record["severity"]) == (3, "stuck", "stop")
    assert record["values"]["loss"] == pytest.approx(LN2, abs=1e-6) and record["values"]["grad_norm"] < 1e-4
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["monitor/alerts"] == 1
    # Checkpoints of steps 1 and 2 exist (save_every=1); none for the step the monitor stopped at.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_first_step_stop_in_the_engine(tiny_model_dir, word_tokenizer, tmp_path):
    # A zero head gives loss ln 2 at step 1; tell the monitor to expect 1.5 and to stop: it stops at step 1.
    cfg = run_config(tiny_model_dir, tmp_path, head_init="zero", batch_size=2, max_steps=4)
    cfg.train.monitor.first_step.expected = 1.5
    cfg.train.monitor.first_step.action = "stop"
    with pytest.raises(MonitorStopError, match="first-step loss 0.6931 differs from its expected initial value 1.5000"):
        train(cfg, make_pairs(vocab_words(word_tokenizer), 8))
    assert [json.loads(r)["check"] for r in (tmp_path / "alerts.jsonl").read_text().splitlines()] == ["first_step"]


def test_docs_name_every_check_and_only_real_keys():
    import re
    from pathlib import Path

    from marginkit.config import RMRunConfig
    from marginkit.configlib import describe

    text = (Path(__file__).resolve().parents[1] / "docs" / "monitor.md").read_text()
    assert set(re.findall(r"^### `([a-z_]+)`", text, flags=re.M)) == set(MarginMonitor().checks)
    keys = {key for key, *_ in describe(RMRunConfig)}
    named = set(re.findall(r"`(train\.monitor\.[a-z_.]+)`", text))
    assert named and all(any(k == n or k.startswith(n + ".") for k in keys) for n in named), named - keys


# ---- each check as a pure function of a hand-made window ----

def window(rows: list[dict[str, float]], start: int = 1, first_loss: float | None = None,
           expected: float | str | None = None) -> Window:
    return Window(tuple(Row(start + i, m) for i, m in enumerate(rows)), first_loss, expected)


def test_pure_first_step():
    cfg = FirstStepConfig()
    # |0.75 - ln 2| = 0.057 > 0.02: fires at step 1 with both numbers; 0.70 is within tolerance.
    assert first_step(window([{"loss": 0.75}], expected=LN2), cfg).values == {"loss": 0.75, "expected": LN2}
    assert first_step(window([{"loss": 0.70}], expected=LN2), cfg) is None
    assert first_step(window([{"loss": 0.75}], start=2, expected=LN2), cfg) is None  # not step 1
    assert first_step(window([{"loss": 0.75}]), cfg) is None  # nothing expected
    # The expected value named as a metric of the step: 1.5 read from the row.
    w = window([{"loss": 0.75, "diagnostics/loss_at_zero_gap": 1.5}], expected="diagnostics/loss_at_zero_gap")
    assert first_step(w, cfg).values["expected"] == 1.5


def test_pure_stuck():
    cfg = StuckConfig(steps=3)
    at_ln2 = {"loss": LN2, "grad_norm": 0.0}
    assert stuck(window([at_ln2] * 3), cfg).values == {"loss": LN2, "grad_norm": 0.0, "steps": 3.0}
    assert stuck(window([at_ln2] * 2), cfg) is None  # two in a row < 3
    assert stuck(window([at_ln2, {"loss": LN2, "grad_norm": 0.5}, at_ln2, at_ln2]), cfg) is None  # run broken
    assert stuck(window([{"loss": LN2, "grad_norm": 0.5}] * 5), cfg) is None  # gradient flows
    # Stuck at the first-step loss 1.3 (not ln 2); a row without grad_norm neither counts nor breaks the run.
    rows = [{"loss": 1.3, "grad_norm": 0.0}, {"loss": 1.3}, {"loss": 1.3, "grad_norm": 0.0}, {"loss": 1.3, "grad_norm": 0.0}]
    finding = stuck(window(rows, first_loss=1.3), cfg)
    assert finding.values["steps"] == 3.0 and finding.fields["anchor"] == "the first-step loss"
    assert stuck(window(rows), cfg) is None  # without the first loss, 1.3 is no starting value


def test_pure_slow_start():
    cfg = SlowStartConfig(steps=3)
    flat = {"loss": LN2, "grad_norm": 0.1, "rewards/margins": 1e-5}
    assert slow_start(window([flat] * 3), cfg, zero_grad_norm=1e-4).values["steps"] == 3.0
    assert slow_start(window([flat] * 3), cfg, zero_grad_norm=0.2) is None  # that gradient counts as zero: stuck
    assert slow_start(window([flat, flat, {**flat, "rewards/margins": 0.05}]), cfg, zero_grad_norm=1e-4) is None
    assert slow_start(window([flat, flat, {**flat, "loss": LN2 - 0.01}]), cfg, zero_grad_norm=1e-4) is None


def test_pure_explosion():
    cfg = ExplosionConfig(growth_window=2)
    sat = {"loss": 0.01, "rewards/accuracies": 1.0}
    # Above max_gap 20 in a saturated run: fires on the current row alone.
    finding = explosion(window([{**sat, "logratios/gap_raw": 25.0}]), cfg)
    assert finding.variant == "above" and finding.values == {"logratios/gap_raw": 25.0, **sat}
    assert explosion(window([{**sat, "loss": 0.3, "logratios/gap_raw": 25.0}]), cfg) is None  # not saturated
    # Growth: 4 -> 12 over growth_window = 2 rows (3 rows in all): 12 >= 3 x 4 and 12 >= min_gap 10.
    grow = [{**sat, "rewards/margins": g} for g in (4.0, 8.0, 12.0)]
    finding = explosion(window(grow), cfg)
    assert finding.variant == "growth" and finding.fields["ratio"] == 3.0
    assert finding.values["rewards/margins@-2"] == 4.0
    assert explosion(window(grow[1:]), cfg) is None  # window not yet full: no growth rule
    assert explosion(window([{**sat, "rewards/margins": g} for g in (5.0, 8.0, 12.0)]), cfg) is None  # 2.4x < 3x
    # The first listed gap metric a row logs is the one watched: the raw gap, not rewards/margins.
    assert explosion(window([{**sat, "logratios/gap_raw": 5.0, "rewards/margins": 25.0}]), cfg) is None


def test_pure_chosen_logps():
    cfg = ChosenLogpsConfig(window=3, min_drop=1.0)
    gaps = ["logratios/gap_raw"]
    # logps -10, -11, -12: fitted fall 1 x 2 = 2 nats >= 1, correlation -1; the gap rises 1, 2, 3.
    rows = [{"logps/chosen": -10.0 - t, "logratios/gap_raw": 1.0 + t} for t in range(3)]
    finding = chosen_logps(window(rows), cfg, gap_metrics=gaps)
    assert finding.values["drop"] == pytest.approx(2.0) and finding.values["correlation"] == pytest.approx(-1.0)
    assert finding.fields["rise"] == pytest.approx(2.0)
    assert chosen_logps(window(rows[:2]), cfg, gap_metrics=gaps) is None  # fewer rows than the window
    shrinking = [{**r, "logratios/gap_raw": 3.0 - t} for t, r in enumerate(rows)]
    assert chosen_logps(window(shrinking), cfg, gap_metrics=gaps) is None  # the gap is not growing
    assert chosen_logps(window(rows), cfg, gap_metrics=["rewards/margins"]) is None  # no watched gap logged


def test_pure_reward_scale():
    cfg = RewardScaleConfig(window=2, min_abs=1.0)
    assert reward_scale(window([{"rewards/chosen": 150.0, "rewards/rejected": 140.0}]), cfg).variant == "above"
    assert reward_scale(window([{"rewards/chosen": 150.0, "rewards/rejected": 140.0, "logps/chosen": -9.0}]),
                        cfg) is None  # a policy run
    # Scales 1, 2, 4: 4 >= 4 x 1 over window = 2 rows, >= min_abs 1, correlation 0.98 >= 0.8.
    rows = [{"rewards/chosen": s, "rewards/rejected": -s / 2} for s in (1.0, 2.0, 4.0)]
    finding = reward_scale(window(rows), cfg)
    assert finding.variant == "growth" and finding.values["scale@-window"] == 1.0 and finding.fields["ratio"] == 4.0
    assert reward_scale(window(rows[1:]), cfg) is None  # window not full
    assert reward_scale(window([{"rewards/chosen": s, "rewards/rejected": 0.0} for s in (1.0, 2.0, 3.9)]), cfg) is None


def test_margin_gap_scales_with_a_short_run():
    # Issue 14: a 126-step MiniLM run whose target margins stayed ~5x the learned gaps on 80% of pairs.
    # m 2.0 over all pairs (active 1), gap 0.4, m > gap on 0.8: 2.0 > ratio 4 x 0.4 = 1.6 and 0.8 >= 0.75.
    # Planned 126 steps: warm-up int(0.25 x 126) = 31, patience min(50, max(10, int(0.4 x 126) = 50)) = 50,
    # so steps 32..81 are the 50 counted steps -> the alert at step 81.
    stayed = {"target_margins/mean": 2.0, "target_margins/active_fraction": 1.0, "rewards/margins": 0.4,
              "diagnostics/margin_exceeds_gap": 0.8}
    assert MarginGapConfig().scaled(126) == (31, 50)
    alerts = run(MarginMonitor(MonitorConfig(repeat_every=0), total_steps=126), [stayed] * 126)
    assert [(a.step, a.check) for a in alerts] == [(81, "margin_gap")]
    assert alerts[0].values == {"margin": 2.0, "rewards/margins": 0.4, "exceeds_fraction": 0.8, "steps": 50.0}
    # Without the planned steps the fixed wait (100 + 50) outlasts the run: the old blind spot.
    assert run(MarginMonitor(MonitorConfig(repeat_every=0)), [stayed] * 126) == []
    # Healthy: m 1.0 while the gap grows 0 -> 0.8 over the run (0.8 s / 126 at step s) and m > gap falls from
    # 1.0 to 0.6. m > 4 x gap only while gap < 0.25, i.e. up to step 39: steps 32..39 are 8 < 50 in a row.
    healthy = [{"target_margins/mean": 1.0, "target_margins/active_fraction": 1.0,
                "rewards/margins": 0.8 * s / 126, "diagnostics/margin_exceeds_gap": 1.0 - 0.4 * s / 126}
               for s in range(1, 127)]
    assert run(MarginMonitor(MonitorConfig(repeat_every=0), total_steps=126), healthy) == []
    # Long runs keep the fixed wait (warm-up 100, patience 50); a tiny one waits at least min_patience = 10.
    assert MarginGapConfig().scaled(400) == (100, 50) and MarginGapConfig().scaled(20) == (5, 10)


def test_pure_margin_gap():
    cfg = MarginGapConfig(patience=2, warmup_steps=10)
    # Active fraction 0.5, mean m 2 -> 4 over active pairs; gap 0.3: 4 > 5 x 0.3; exceeds 0.5 / 0.5 = 1.
    far = {"target_margins/mean": 2.0, "target_margins/active_fraction": 0.5, "rewards/margins": 0.3,
           "diagnostics/margin_exceeds_gap": 0.5}
    finding = margin_gap(window([far] * 2, start=11), cfg)
    assert finding.values == {"margin": 4.0, "rewards/margins": 0.3, "exceeds_fraction": 1.0, "steps": 2.0}
    assert margin_gap(window([far] * 2, start=10), cfg) is None  # step 10 is still warm-up
    assert margin_gap(window([far, {**far, "rewards/margins": 1.0}], start=11), cfg) is None  # 4 < 5 x 1
    assert margin_gap(window([far, {"loss": 1.0}, far], start=11), cfg) is None  # a row without margins breaks it


def test_every_check_has_a_message_and_renders_its_finding():
    assert set(MESSAGES) == set(MarginMonitor().checks) | set(MarginMonitor(RLMonitorConfig()).checks)
    finding = stuck(window([{"loss": LN2, "grad_norm": 0.0}] * 10), StuckConfig())
    assert render("stuck", finding).startswith("training is stuck: for 10 steps the loss has stayed at 0.6931 "
                                               "(ln 2) with gradient norm 0.00e+00")


def test_reads_a_checkpoint_of_the_stateful_checks():
    # The state the monitor wrote before its checks were pure functions: cooldowns and the first loss carry
    # over (stuck alerted at step 5, so with repeat_every 100 it stays quiet at step 20); the windows restart.
    old = {"last_alert": {"stuck": 5}, "checks": {"first_step": {"seen": True, "first_loss": 1.3},
                                                  "stuck": {"count": 12}, "explosion": {"gaps": [1.0, 2.0]}}}
    monitor = MarginMonitor(MonitorConfig(stuck=StuckConfig(steps=2)))
    monitor.load_state_dict(old)
    assert monitor.first_loss == 1.3 and list(monitor.rows) == []
    assert run(monitor, [{"loss": 1.3, "grad_norm": 0.0}] * 3, start=20) == []
    assert [a.check for a in run(monitor, [{"loss": 1.3, "grad_norm": 0.0}], start=105)] == ["stuck"]


def test_docs_dotted_names_resolve():
    """Every `marginkit.…` path docs/monitor.md names is a module or an attribute of one."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "monitor.md").read_text()
    names = set(re.findall(r"`(marginkit(?:\.[A-Za-z_]+)+)`", text))
    assert "marginkit.diagnostics.checks.stuck.stuck" in names
    for name in names:
        resolve_dotted(name)
