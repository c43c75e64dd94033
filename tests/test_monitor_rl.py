"""The margin monitor's online-RL checks (issue 16): kl_blowup, reward_hacking, entropy_collapse and
length_collapse, each on hand-worked windows (one that fires, one that does not, the boundary); the RL
table on an over-optimisation series; and a tiny GRPO run whose monitor stops it."""

from __future__ import annotations

import json

import pytest

from marginkit.diagnostics.checks.entropy_collapse import EntropyCollapseConfig, entropy_collapse
from marginkit.diagnostics.checks.kl_blowup import KLBlowupConfig, kl_blowup
from marginkit.diagnostics.checks.length_collapse import LengthCollapseConfig, length_collapse
from marginkit.diagnostics.checks.messages import render
from marginkit.diagnostics.checks.reward_hacking import RewardHackingConfig, reward_hacking
from marginkit.diagnostics.checks.window import Row, Window
from marginkit.diagnostics.monitor import (
    RL_CHECKS,
    MarginMonitor,
    MonitorStopError,
    RLMonitorConfig,
    window_rows,
)


def window(series: dict[str, list[float]], first: dict[str, float] | None = None) -> Window:
    n = len(next(iter(series.values())))
    return Window(tuple(Row(i + 1, {k: v[i] for k, v in series.items()}) for i in range(n)), first=first or {})


# ---- kl_blowup ----

def test_kl_blowup_above_the_limit_for_patience_steps():
    cfg = KLBlowupConfig(max_kl=1.0, patience=3, window=20)
    assert kl_blowup(window({"kl": [0.5, 1.2, 1.3, 1.4]}), cfg).variant == "above"  # three steps above 1
    assert kl_blowup(window({"kl": [0.5, 0.9, 1.3, 1.4]}), cfg) is None  # only two
    assert kl_blowup(window({"kl": [1.2, 1.3, 1.0]}), cfg) is None  # boundary: equal to max_kl is not above
    assert kl_blowup(window({"reward": [1.0]}), cfg) is None  # no kl logged (beta = 0)


def test_kl_blowup_growth_over_the_window():
    cfg = KLBlowupConfig(max_kl=100, growth_factor=10, window=4, min_kl=0.1)
    f = kl_blowup(window({"kl": [0.02, 0.03, 0.05, 0.1, 0.2]}), cfg)  # 0.2 = 10 x 0.02, four steps later
    assert f is not None and f.variant == "growth" and f.values["kl@-4"] == 0.02
    assert "10.0x its value 4 steps ago" in render("kl_blowup", f)
    assert kl_blowup(window({"kl": [0.021, 0.03, 0.05, 0.1, 0.2]}), cfg) is None  # 9.5x: below the factor
    assert kl_blowup(window({"kl": [0.005, 0.01, 0.02, 0.04, 0.05]}), cfg) is None  # 10x, but below min_kl
    assert kl_blowup(window({"kl": [0.0, 0.01, 0.02, 0.05, 0.1]}), cfg) is not None  # from 0 to min_kl
    assert kl_blowup(window({"kl": [0.03, 0.05, 0.1, 0.2]}), cfg) is None  # not yet window + 1 rows


# ---- reward_hacking ----

def test_reward_hacking_fires_on_opposite_slopes():
    cfg = RewardHackingConfig(window=5, min_slope=0.01, min_trend=0.5)
    # reward 0, .1, .2, .3, .4 (slope 0.1); gold 0, -.05, -.1, -.15, -.2 (slope -0.05)
    f = reward_hacking(window({"reward": [0.0, 0.1, 0.2, 0.3, 0.4], "gold/reward": [0.0, -0.05, -0.1, -0.15, -0.2]}), cfg)
    assert f is not None
    assert f.values["reward_slope"] == pytest.approx(0.1) and f.values["gold_slope"] == pytest.approx(-0.05)
    assert "rose by 0.400" in render("reward_hacking", f) and "fell by 0.200" in render("reward_hacking", f)


def test_reward_hacking_quiet_when_both_rise_or_gold_is_flat_or_absent():
    cfg = RewardHackingConfig(window=5, min_slope=0.01, min_trend=0.5)
    up = [0.0, 0.1, 0.2, 0.3, 0.4]
    assert reward_hacking(window({"reward": up, "gold/reward": up}), cfg) is None  # healthy: both rise
    assert reward_hacking(window({"reward": up}), cfg) is None  # no gold reward logged
    assert reward_hacking(window({"reward": up[1:], "gold/reward": [0, -1, -2, -3]}), cfg) is None  # 4 < window rows
    # boundary: gold's slope exactly -min_slope (0, -.01, ..., -.04) is not beyond the tolerance
    assert reward_hacking(window({"reward": up, "gold/reward": [0.0, -0.01, -0.02, -0.03, -0.04]}), cfg) is None
    assert reward_hacking(window({"reward": up, "gold/reward": [0.0, -0.011, -0.022, -0.033, -0.044]}), cfg) is not None
    # noise: gold's fit slopes down but its correlation is weak (-0.3 < 0.5 in size)
    assert reward_hacking(window({"reward": up, "gold/reward": [0.0, 0.3, -0.3, 0.2, -0.2]}), cfg) is None


# ---- entropy_collapse ----

def test_entropy_collapse_below_the_floor_for_patience_steps():
    cfg = EntropyCollapseConfig(min_entropy=0.05, min_fraction=0.1, patience=3)
    f = entropy_collapse(window({"entropy": [1.0, 0.04, 0.03, 0.02]}), cfg)
    assert f is not None and f.variant == "floor" and f.values["steps"] == 3
    assert entropy_collapse(window({"entropy": [1.0, 0.6, 0.03, 0.02]}), cfg) is None  # two steps only
    assert entropy_collapse(window({"entropy": [0.04, 0.03, 0.05]}), cfg) is None  # boundary: 0.05 is not below


def test_entropy_collapse_fraction_of_the_first_value():
    cfg = EntropyCollapseConfig(min_entropy=0.05, min_fraction=0.1, patience=2)
    first = {"entropy": 2.0}  # limit 0.2
    f = entropy_collapse(window({"entropy": [0.19, 0.15]}, first), cfg)
    assert f is not None and f.variant == "fraction" and "7.5% of its step-1 value 2.0000" in render("entropy_collapse", f)
    assert entropy_collapse(window({"entropy": [0.19, 0.2]}, first), cfg) is None  # boundary: 0.2 = 10% is not below
    assert entropy_collapse(window({"entropy": [0.19, 0.15]}), cfg) is None  # step 1 not seen: only the 0.05 floor


# ---- length_collapse ----

def lengths(mins, maxs, clipped=None) -> dict[str, list[float]]:
    out = {"completions/min_length": mins, "completions/max_length": maxs}
    if clipped is not None:
        out["completions/clipped_ratio"] = clipped
    return out


def test_length_collapse_one_length():
    cfg = LengthCollapseConfig(max_spread=0, patience=3)
    f = length_collapse(window(lengths([3, 7, 7, 7], [9, 7, 7, 7])), cfg)
    assert f is not None and f.variant == "spread" and "every completion has the same length" in render("length_collapse", f)
    assert length_collapse(window(lengths([7, 7, 7], [7, 8, 7])), cfg) is None  # one spread of 1 breaks the run
    assert length_collapse(window(lengths([7, 7, 7], [8, 8, 8])), LengthCollapseConfig(max_spread=1, patience=3)) is not None


def test_length_collapse_all_at_the_cap():
    cfg = LengthCollapseConfig(clipped_ratio=1.0, patience=2)
    f = length_collapse(window(lengths([24, 24], [24, 24], [1.0, 1.0])), cfg)
    assert f is not None and f.variant == "cap"
    assert length_collapse(window(lengths([20, 22], [24, 24], [0.9, 1.0])), cfg) is None  # boundary: one step not capped
    assert length_collapse(window({"reward": [1.0, 1.0]}), cfg) is None  # lengths not logged


# ---- the RL table ----

def over_optimised_series() -> list[dict[str, float]]:
    """100 rollout steps shaped like a hand-run over-optimised GRPO run (GRPO against a small BT RM on the world,
    docs/rl.md; its numbers are test inputs here, not evidence), logged every 25 steps: RM reward 0.48, 1.08,
    1.77, 1.94; gold +0.09, -0.41, -3.58, -4.12; kl 0.11, 0.88, 2.54, 5.21; mean length 8.7, 11.4, 21.8, 23.5,
    linearly interpolated between those points."""
    points = {"reward": [0.48, 1.08, 1.77, 1.94], "gold/reward": [0.09, -0.41, -3.58, -4.12],
              "kl": [0.11, 0.88, 2.54, 5.21], "completions/mean_length": [8.7, 11.4, 21.8, 23.5]}
    rows = []
    for step in range(1, 101):
        t = min((step - 1) / 33, 2.999)
        i, frac = int(t), t - int(t)
        row = {k: v[i] + frac * (v[i + 1] - v[i]) for k, v in points.items()}
        row |= {"entropy": 2.0, "completions/min_length": 1.0, "completions/max_length": 24.0,
                "completions/clipped_ratio": 0.3}
        rows.append(row)
    return rows


def test_the_over_optimised_series_raises_reward_hacking_and_kl_blowup():
    monitor = MarginMonitor(RLMonitorConfig())
    alerts = [a for step, row in enumerate(over_optimised_series(), 1) for a in monitor.observe(step, row)]
    first = {}
    for a in alerts:
        first.setdefault(a.check, a)
    assert set(first) == {"reward_hacking", "kl_blowup"}
    assert first["reward_hacking"].step == 20  # the first full 20-step window
    assert first["kl_blowup"].step == 39  # kl above 1 from step 37
    assert first["reward_hacking"].severity == "warn" and "gold/reward fell" in first["reward_hacking"].message


def test_a_healthy_rl_series_raises_nothing_and_the_table_only_reads_rl_metrics():
    monitor = MarginMonitor(RLMonitorConfig())
    assert set(monitor.checks) == set(RL_CHECKS) and window_rows(RLMonitorConfig()) == 121
    healthy = [{"reward": 0.1 + 0.01 * s, "gold/reward": 0.05 + 0.01 * s, "kl": 0.002 * s, "entropy": 2.0 - 0.005 * s,
                "completions/min_length": 3.0 + s % 3, "completions/max_length": 12.0, "completions/clipped_ratio": 0.1,
                "loss": 0.0, "grad_norm": 0.0} for s in range(1, 151)]
    assert [a for s, row in enumerate(healthy, 1) for a in monitor.observe(s, row)] == []
    state = monitor.state_dict()
    again = MarginMonitor(RLMonitorConfig())
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.first_row == healthy[0] and again.window() == monitor.window()


@pytest.mark.parametrize("key", ["kl_blowup.window", "reward_hacking.window", "entropy_collapse.patience",
                                 "length_collapse.patience", "kl_blowup.growth_factor"])
def test_rl_monitor_config_refuses_bad_windows(key):
    check, name = key.split(".")
    bad = {check: type(getattr(RLMonitorConfig(), check))(**{name: 1 if "growth" in name else 0})}
    with pytest.raises(ValueError, match=key):
        RLMonitorConfig(**bad)


def test_a_grpo_run_stopped_by_the_monitor_writes_alerts_and_no_checkpoint(tmp_path):
    from _rl_helpers import make_world_lm
    from _rl_helpers import rl_config as config
    from marginkit.train.rl import train_grpo

    lm = make_world_lm(tmp_path / "lm")
    # every rollout counts as collapsed (a spread of up to 8 tokens, max_new_tokens) from step 1: stop at step 2
    cfg = config(lm, tmp_path / "run", train={"max_steps": 3, "save_every": 1, "monitor": {
        "length_collapse": {"max_spread": 8, "patience": 2, "action": "stop"}}})
    with pytest.raises(MonitorStopError) as info:
        train_grpo(cfg, console=lambda _: None)
    assert info.value.alert.check == "length_collapse" and info.value.alert.step == 2
    alerts = [json.loads(line) for line in (tmp_path / "run" / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["check"], a["severity"]) for a in alerts] == [(2, "length_collapse", "stop")]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000001"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]  # the stopped step's metrics are written
