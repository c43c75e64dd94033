"""`marginkit world rl-compare` (study/rl_compare): the tiny run end to end, reuse of finished seeds, and the
tables' statistics against hand-worked rows."""

from __future__ import annotations

import json
import math

import pytest

from marginkit.cli import main
from marginkit.errors import UserError
from marginkit.report.html import write_report
from marginkit.study.render import read_rows
from marginkit.study.rl_compare.report import (
    alerts_table,
    controls,
    main_table,
    margin_table,
    over_optimisation_table,
    seed_001_table,
)
from marginkit.study.rl_compare.runner import (
    ALERT_ROWS,
    CURVES,
    DPO_VARIANTS,
    RL_RUNS,
    RM_ROWS,
    RMS,
    ROWS,
    RLCompareConfig,
    finished_seed,
    run_rl_compare,
)


@pytest.mark.slow
def test_tiny_run_writes_every_policy_curve_and_plot_and_reuses_finished_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["world", "rl-compare", "--size", "tiny", "--seeds", "0", "--out", str(out)]) == 0
    rows = read_rows(out / ROWS)
    got = {(r["policy"], r["rm"] or "") for r in rows}  # read_rows gives None for an empty cell
    expected = ({("base", ""), ("sft", "")} | {(n, "label" if n == "odpo" else "") for n in DPO_VARIANTS}
                | {(f"bon-{n}", rm) for n in (1, 2, 4) for rm in RMS} | set(RL_RUNS))
    assert got == expected
    for r in rows:
        assert math.isfinite(r["gold"]) and math.isfinite(r["rm_bt"]) and math.isfinite(r["rm_label"])
        assert (r["kl"] is None) == (r["policy"] == "base")
    bon1 = [r for r in rows if r["policy"] == "bon-1"]
    assert all(r["kl"] == 0.0 for r in bon1)  # log 1 - 0 / 1
    # BoN at N = 1 is the first SFT sample whatever the RM: the same pick for both RMs
    assert bon1[0]["gold"] == bon1[1]["gold"]
    curves = read_rows(out / CURVES)
    assert {(c["method"], c["rm"]) for c in curves} == set(RL_RUNS)
    assert {c["step"] for c in curves} == {1, 2}  # eval_every 1 over 2 steps
    assert {r["rm"] for r in read_rows(out / RM_ROWS)} == set(RMS)
    alerts = read_rows(out / ALERT_ROWS)  # two steps: no monitor check can fire; one quiet row per run
    assert {(a["method"], a["rm"]) for a in alerts} == set(RL_RUNS) and all(a["count"] == 0 for a in alerts)
    assert (out / "rl_frontier.png").stat().st_size > 0 and (out / "rl_over_optimisation.png").stat().st_size > 0
    assert "## Positive controls" in (out / "summary.md").read_text()

    # a second seed: the first is reused (same settings), not run again
    before = (out / "seed0" / "result.json").stat().st_mtime_ns
    run_rl_compare(RLCompareConfig(out=str(out), size="tiny", seeds=[0, 1]), say=lambda s: None)
    assert (out / "seed0" / "result.json").stat().st_mtime_ns == before
    assert {r["seed"] for r in read_rows(out / ROWS)} == {0, 1}
    # other settings than the finished seed's are refused, never mixed in
    with pytest.raises(UserError, match="other settings"):
        finished_seed(RLCompareConfig(out=str(out), size="tiny", seeds=[0], max_new_tokens=9), 0)
    assert finished_seed(RLCompareConfig(out=str(out), size="tiny", seeds=[0], reuse=False), 0) is None

    page = write_report([out], tmp_path / "r.html").read_text()
    assert "Online RL vs DPO" in page and "gold reward vs KL to SFT" in page and "Positive controls" in page
    assert 'class="problem"' not in page


def _row(seed, policy, gold, rm="", family="dpo", kl=0.5, se=0.1, **extra):
    return {"seed": seed, "policy": policy, "family": family, "rm": rm, "gold": gold, "gold_se": se,
            "rm_bt": extra.get("rm_bt", 0.0), "rm_label": extra.get("rm_label", 0.0), "kl": kl, "words": 10.0,
            "n_samples": 4, "seconds": 1.0}


def _rows():
    """Three seeds. SFT 0.1, 0.2, 0.3; base 0.0 each; dpo-0.1 SFT + 0.1, + 0.2, + 0.3; grpo on gold SFT + 1."""
    rows = []
    for s, sft in zip((0, 1, 2), (0.1, 0.2, 0.3)):
        rows += [_row(s, "base", 0.0, family="base", kl=None), _row(s, "sft", sft, family="sft", kl=0.0),
                 _row(s, "dpo-0.1", sft + 0.1 * (s + 1)), _row(s, "dpo-0.3", sft),
                 _row(s, "grpo", sft + 1.0, rm="gold", family="rl", kl=2.0),
                 _row(s, "grpo", sft - 0.5, rm="bt", family="rl", rm_bt=3.0),
                 _row(s, "grpo", sft + 0.5 + 0.1 * s, rm="label", family="rl", rm_label=2.0),
                 _row(s, "ppo", sft, rm="bt", family="rl"), _row(s, "ppo", sft + 0.2, rm="label", family="rl")]
    return rows


def test_main_table_differences_by_hand():
    table = main_table(_rows())
    # dpo-0.1 - SFT over seeds: 0.1, 0.2, 0.3 -> mean 0.2, sd 0.1, t_2(0.975) = 4.303, half 4.303 * 0.1/sqrt(3) = 0.248
    line = next(x for x in table.splitlines() if x.startswith("| dpo-0.1 |"))
    assert "+0.200 [-0.048, +0.448]" in line
    # over prompts: se of each difference sqrt(0.1^2 + 0.1^2) = 0.1414, pooled sqrt(3 * 0.02)/3 = 0.0816,
    # 1.96 * 0.0816 = 0.160 -> [0.040, 0.360]
    assert "+0.200 [+0.040, +0.360]" in line
    # grpo on the true reward: SFT + 1 on every seed -> exactly +1.000, p = 0 (sd 0)
    gold = next(x for x in table.splitlines() if x.startswith("| grpo (true reward) |"))
    assert "| +1.000 [+1.000, +1.000] |" in gold and "<0.001" in gold
    # Holm over the 8 comparisons with SFT: p = 0 (grpo gold, grpo bt, ppo label: constant non-zero differences),
    # 0.00913 (grpo label: 0.5, 0.6, 0.7, t = 10.39), 0.0742 twice (base and dpo-0.1: t = 3.464 on 2 df), 1 twice
    # (dpo-0.3, ppo bt: all 0). Sorted, k = 4th: 5 x 0.00913 = 0.046; 5th: 4 x 0.0742 = 0.297; 6th: max(0.297, 3 x
    # 0.0742) = 0.297.
    assert "| 0.297 |" in line
    assert "| 0.046 |" in next(x for x in table.splitlines() if x.startswith("| grpo (RM label) |"))
    # its RM's reward - SFT: grpo with RM bt scores 3.0 under rm_bt, SFT 0.0
    bt = next(x for x in table.splitlines() if x.startswith("| grpo (RM bt) |"))
    assert "| +3.000 [+3.000, +3.000] |" in bt


def test_controls_verdicts():
    text = controls(_rows())
    assert "SFT beats the base sampler: +0.200 [-0.048, +0.448]" in text  # 0.1, 0.2, 0.3 over base 0
    assert text.splitlines()[0].endswith("**FAILS**.")  # the interval reaches below 0
    assert "(the ceiling): +1.000" in text and "at KL 2.00 to SFT" in text and text.splitlines()[1].endswith("**holds**.")
    rows = [dict(r, gold=r["gold"] + 1.0) if r["policy"] == "sft" else r for r in _rows()]
    assert controls(rows).splitlines()[0].endswith("**holds**.")  # SFT 1.1, 1.2, 1.3 over 0, sd 0.1


def test_margin_table_holm_by_hand():
    text = margin_table(_rows())
    # grpo: label - bt = (sft + 0.5 + 0.1 s) - (sft - 0.5) = 1.0, 1.1, 1.2: mean 1.1, sd 0.1 -> t = 19.05 on 2 df,
    # p = 0.00274; ppo: 0.2 on every seed -> p = 0. Holm over the two: ppo 2 * 0 = 0, grpo max(0, 1 * 0.00274).
    grpo = next(x for x in text.splitlines() if x.startswith("| grpo |"))
    assert "+1.100 [+0.852, +1.348]" in grpo and "| 0.003 |" in grpo and "3 of 3" in grpo
    ppo = next(x for x in text.splitlines() if x.startswith("| ppo |"))
    assert "+0.200 [+0.200, +0.200]" in ppo and "<0.001" in ppo
    # detectable effect at 80% power, m = 2: (t_2(1 - 0.05/4) + t_2(0.8)) * 0.1 / sqrt(3) = (6.205 + 1.061) * 0.0577
    assert "| 0.420 |" in grpo


def test_over_optimisation_table_finds_the_peak_by_hand():
    curves = []
    for seed, bump in ((0, 0.0), (1, 0.2)):
        for step, gold, rm in ((5, 0.0, 0.0), (10, 1.0 + bump, 1.0), (15, 0.5, 2.0)):
            curves.append({"seed": seed, "method": "grpo", "rm": "bt", "step": step, "rm_reward": rm, "gold": gold,
                           "kl": step / 10, "words": 5})
    line = over_optimisation_table(curves).splitlines()[2]
    # mean gold per step: 0.0, 1.1, 0.5 -> peak at 10; drops per seed 0.5 and 0.7 -> mean 0.6
    assert line.startswith("| grpo (RM bt) | +0.000 → +1.100 (10) → +0.500 | +0.600 [")
    assert "+0.000 → +2.000" in line and line.endswith("| 1.50 |")


def test_predictions_apply_their_stated_rules_by_hand():
    from marginkit.study.rl_compare.report import predictions

    text = predictions(_rows(), []).splitlines()
    # 1: SFT - base = 0.1, 0.2, 0.3, higher in every seed
    assert text[0].startswith("1. SFT − base sampler +0.200 [-0.048, +0.448]") and text[0].endswith("**held**.")
    # 2: +1.000 exactly (interval above +0.5) at KL 2.00
    assert "+1.000 [+1.000, +1.000] at KL 2.00" in text[1] and text[1].endswith("**held**.")
    # 5 (no BoN rows, no curves, so 3 and 4 are absent): grpo +1.1, ppo +0.2: label at least as good in both
    five = next(x for x in text if x.startswith("5."))
    assert "grpo +1.100, ppo +0.200" in five and five.endswith("**held**.")
    # 6: dpo-0.1 +0.2 and dpo-0.3 +0.0 over SFT: dpo-0.3 is no gain -> failed
    six = next(x for x in text if x.startswith("6."))
    assert "β 0.1 +0.200" in six and "β 0.3 +0.000" in six and six.endswith("**failed**.")
    # 7: SFT means 0.2: grpo/label 0.2 + 0.5 + 0.1 = 0.8 first, grpo/bt -0.3 last
    assert text[-1] == ("7. (No prediction.) RM-driven RL runs by true reward: grpo/label +0.800 > ppo/label +0.400 > "
                        "ppo/bt +0.200 > grpo/bt -0.300.")


def test_alerts_table_counts_seeds_by_hand():
    alerts = [{"seed": 0, "method": "grpo", "rm": "label", "check": "kl_blowup", "first_step": 100, "count": 3},
              {"seed": 0, "method": "grpo", "rm": "label", "check": "reward_hacking", "first_step": 190, "count": 1},
              {"seed": 1, "method": "grpo", "rm": "label", "check": "kl_blowup", "first_step": 140, "count": 1},
              {"seed": 0, "method": "grpo", "rm": "gold", "check": "", "first_step": None, "count": 0},
              {"seed": 1, "method": "grpo", "rm": "gold", "check": "", "first_step": None, "count": 0}]
    curves = [{"seed": s, "method": "grpo", "rm": rm, "step": step, "gold": g}
              for s, rm, golds in ((0, "label", (0.5, 1.0, 0.2)), (1, "label", (0.5, 0.6, 0.55)),
                                   (0, "gold", (0.5, 1.0, 1.2)), (1, "gold", (0.5, 1.0, 0.95)))
              for step, g in zip((25, 50, 75), golds)]
    lines = alerts_table(alerts, curves).splitlines()
    assert lines[0] == ("| run | seeds | gold fell > 0.1 after its peak | `kl_blowup` fired (median first step) | "
                        "`reward_hacking` fired (median first step) |")
    # label: seed 0 fell 0.8, seed 1 fell 0.05 (not > 0.1); kl_blowup in both (median of 100, 140 = 120)
    assert lines[2] == "| grpo (RM label) | 2 | 1 of 2 | 2 of 2 (120) | 1 of 2 (190) |"
    assert lines[3] == "| grpo (true reward) | 2 | 0 of 2 | 0 of 2 | 0 of 2 |"


def test_seed_001_ranking_beside_ours():
    text = seed_001_table(_rows())
    assert "DPO > SFT > PPO > GRPO" in text  # seed 001: 4.148 > 4.131 > 3.523 > 3.312
    # ours with BT RMs, means over seeds: SFT 0.2, DPO max(0.4, 0.2) = 0.4, PPO 0.2, GRPO -0.3 (ties keep order)
    ours = next(x for x in text.splitlines() if x.startswith("| ours, RMs trained with BT"))
    assert "| +0.200 | +0.400 | +0.200 | -0.300 | DPO > SFT > PPO > GRPO |" in ours
    # dpo-0.1 (0.4) above SFT (0.2); dpo-0.3 equals SFT (0.2), not above: the order reverses
    assert text.splitlines()[-1].endswith("ours does (DPO above SFT at β 0.1, not above at β 0.3).")


def test_result_json_is_the_rows_source(tmp_path):
    """finished_seed reads what run_seed wrote: a hand-made result with this config's settings is accepted."""
    from marginkit.study.rl_compare.runner import _settings

    cfg = RLCompareConfig(out=str(tmp_path), size="tiny", seeds=[3])
    (tmp_path / "seed3").mkdir()
    result = {"settings": _settings(cfg), "rows": [], "curves": [], "rms": []}
    (tmp_path / "seed3" / "result.json").write_text(json.dumps(result))
    assert finished_seed(cfg, 3) == json.loads(json.dumps(result))
